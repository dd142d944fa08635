using System.CommandLine;
using System.Globalization;
using System.Text;
using FeatureFlow.Models;
using FeatureFlow.Models.Folder;
using FeatureFlow.Models.Formats;
using FeatureFlow.Sae.Formats;
using FeatureFlow.Sae;
using FeatureFlow.Sae.Training;

namespace FeatureFlow.Cli;

public static class SaeCommand
{
    public static Command Build(TextWriter output, TextWriter error)
    {
        var command = new Command("sae", "Train, import and inspect sparse autoencoders.");
        command.Subcommands.Add(Train(output, error));
        command.Subcommands.Add(Import(output, error));
        command.Subcommands.Add(Top(output, error));
        command.Subcommands.Add(Find(output, error));
        return command;
    }

    public static Option<string> CorpusOption() =>
        new("--corpus") { Description = "activation corpus written by `featureflow collect`", DefaultValueFactory = _ => "artifacts/corpus" };

    public static Option<string?> SaesOption() =>
        new("--saes") { Description = "SAE folder (default: the model folder's saes/)" };

    public static string SaeDirectory(ModelFolder folder, string? saes) => saes ?? Path.Combine(folder.Directory, "saes");

    private static Command Train(TextWriter output, TextWriter error)
    {
        var model = ServeCommand.ModelOption();
        var corpus = CorpusOption();
        var saes = SaesOption();
        var sites = new Option<string[]>("--site") { Description = "hook name to train (repeatable; default: every site)" };
        var defaults = new TopKTrainingOptions();
        var k = new Option<int>("--k") { Description = "active features per token", DefaultValueFactory = _ => defaults.K };
        var dSae = new Option<int>("--d-sae") { Description = "features (default 8 × d_model)", DefaultValueFactory = _ => 0 };
        var epochs = new Option<int>("--epochs") { Description = "passes over the training tokens", DefaultValueFactory = _ => defaults.Epochs };
        var lr = new Option<float>("--lr") { Description = "Adam learning rate", DefaultValueFactory = _ => defaults.LearningRate };
        var seed = new Option<ulong>("--seed") { Description = "seed (same seed and corpus, same SAE)", DefaultValueFactory = _ => defaults.Seed };
        var jumpRelu = new Option<bool>("--jumprelu") { Description = "write JumpReLU SAEs (per-feature thresholds) instead of TopK" };
        var command = new Command("train", "Train TopK SAEs on collected activations and write SAELens folders plus a README with FVU, L0 and dead features per site.")
        {
            model, corpus, saes, sites, k, dSae, epochs, lr, seed, jumpRelu,
        };
        command.SetAction((parse, _) => CliApp.Guard(error, () =>
        {
            var folder = ModelFolder.Open(parse.GetValue(model)!);
            var data = ActivationCorpus.Open(parse.GetValue(corpus)!);
            var outDir = SaeDirectory(folder, parse.GetValue(saes));
            var chosen = (parse.GetValue(sites) is { Length: > 0 } names ? names.Select(Site.Parse) : Site.All(folder.Manifest.Architecture.Layers)).ToArray();
            var options = new TopKTrainingOptions
            {
                K = parse.GetValue(k), DSae = parse.GetValue(dSae), Epochs = parse.GetValue(epochs),
                LearningRate = parse.GetValue(lr), Seed = parse.GetValue(seed),
            };
            var rows = new List<string>();
            foreach (var site in chosen)
            {
                var activations = data.ReadSite(site);
                var bar = new ProgressBar(error, $"sae train {site}", "steps");
                var (sae, train, heldOut) = TopKTrainer.Train(activations, data.Manifest.DModel, site, folder.Manifest.Name, options, bar.Report);
                SaeLensFormat.Write(sae, Path.Combine(outDir, site.HookName), parse.GetValue(jumpRelu));
                var row = string.Create(CultureInfo.InvariantCulture,
                    $"| `{site}` | {sae.DSae} | {sae.K} | {heldOut.Fvu:F4} | {heldOut.MeanL0:F2} | {heldOut.DeadShare:P1} | {train.Fvu:F4} |");
                rows.Add(row);
                output.WriteLine($"{site}: held-out FVU {heldOut.Fvu:F4}, L0 {heldOut.MeanL0:F2}, dead {heldOut.DeadShare:P1} ({heldOut.Tokens:N0} tokens)");
            }
            WriteReadme(outDir, folder, data, options, rows, parse.GetValue(jumpRelu));
            return Task.FromResult(0);
        }));
        return command;
    }

    private static Command Import(TextWriter output, TextWriter error)
    {
        var model = ServeCommand.ModelOption();
        var saes = SaesOption();
        var format = new Option<SaeSourceFormat>("--format") { Description = "SaeLens (cfg.json + sae_weights.safetensors), GemmaScope (params.npz) or Sparsify (cfg.json + sae.safetensors)", Required = true };
        var path = new Option<string>("--path") { Description = "the SAE folder (or params.npz)", Required = true };
        var site = new Option<string?>("--site") { Description = "hook name the SAE reads (required for GemmaScope and Sparsify, which name hookpoints their own way)" };
        var command = new Command("import", "Import a public SAE, check it against the model (site, d_model), and store it as a SAELens folder in the model's SAE folder.")
        {
            model, saes, format, path, site,
        };
        command.SetAction((parse, _) => CliApp.Guard(error, () =>
        {
            var folder = ModelFolder.Open(parse.GetValue(model)!);
            var at = parse.GetValue(site) is { } hook ? Site.Parse(hook) : (Site?)null;
            var source = parse.GetValue(path)!;
            var sae = SaeImport.Read(parse.GetValue(format), source, at, folder.Manifest.Name);
            Sae.SaeSet.Check(sae, folder.Manifest.Architecture, source);
            var target = Path.Combine(SaeDirectory(folder, parse.GetValue(saes)), sae.Site.HookName);
            SaeLensFormat.Write(sae, target);
            output.WriteLine($"imported {sae.Activation} SAE ({sae.DSae} features) at {sae.Site} into {target}");
            return Task.FromResult(0);
        }));
        return command;
    }

    private static Command Top(TextWriter output, TextWriter error)
    {
        var feature = new Argument<string>("FEATURE") { Description = "blocks.L.hook_<site>/N or L/res|mlp|att/N" };
        var model = ServeCommand.ModelOption();
        var saes = SaesOption();
        var corpus = CorpusOption();
        var count = new Option<int>("--count") { Description = "contexts to show", DefaultValueFactory = _ => 12 };
        var width = new Option<int>("--context") { Description = "tokens of context before the activating token", DefaultValueFactory = _ => 12 };
        var command = new Command("top", "Show the contexts in the collected corpus where a feature activates most, so a person can name it.")
        {
            feature, model, saes, corpus, count, width,
        };
        command.SetAction((parse, _) => CliApp.Guard(error, () =>
        {
            var folder = ModelFolder.Open(parse.GetValue(model)!);
            var id = Flow.FeatureId.Parse(parse.GetValue(feature)!);
            var set = Sae.SaeSet.Load(SaeDirectory(folder, parse.GetValue(saes)), folder.Manifest.Architecture);
            var sae = set.Get(id.Site, "FEATURE");
            sae.CheckFeature(id.Index, "FEATURE");
            var data = ActivationCorpus.Open(parse.GetValue(corpus)!);
            var top = FeatureContexts.Top(sae, id.Index, data, folder.LoadTokenizer(), parse.GetValue(count), parse.GetValue(width));
            output.WriteLine($"{id} ({id.Short}): top {top.Count} of {data.Manifest.TotalTokens:N0} tokens");
            foreach (var c in top)
                output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{c.Activation,8:F3}  …{c.Before.Replace("\n", "⏎", StringComparison.Ordinal)}[[{c.Token.Replace("\n", "⏎", StringComparison.Ordinal)}]]"));
            return Task.FromResult(0);
        }));
        return command;
    }

    private static Command Find(TextWriter output, TextWriter error)
    {
        var words = new Argument<string[]>("WORD") { Description = "words to find features for", Arity = ArgumentArity.OneOrMore };
        var site = new Option<string>("--site") { Description = "hook name whose SAE to search", DefaultValueFactory = _ => "blocks.2.hook_resid_post" };
        var model = ServeCommand.ModelOption();
        var saes = SaesOption();
        var corpus = CorpusOption();
        var top = new Option<int>("--top") { DefaultValueFactory = _ => 3 };
        var tokens = new Option<long>("--tokens") { Description = "corpus tokens to scan", DefaultValueFactory = _ => 200_000 };
        var command = new Command("find", "Rank features by how selectively they fire on the token that ends a word (then check them with `sae top`).")
        {
            words, site, model, saes, corpus, top, tokens,
        };
        command.SetAction((parse, _) => CliApp.Guard(error, () =>
        {
            var folder = ModelFolder.Open(parse.GetValue(model)!);
            var set = Sae.SaeSet.Load(SaeDirectory(folder, parse.GetValue(saes)), folder.Manifest.Architecture);
            var at = Site.Parse(parse.GetValue(site)!);
            var results = FeatureContexts.FindByWord(set.Get(at, "--site"), ActivationCorpus.Open(parse.GetValue(corpus)!), folder.LoadTokenizer(),
                parse.GetValue(words)!, parse.GetValue(top), parse.GetValue(tokens));
            foreach (var (word, best) in results)
                output.WriteLine(best.Length == 0 ? $"{word}: not in the scanned corpus"
                    : $"{word} ({best[0].Occurrences} times): " + string.Join("  ", best.Select(b => string.Create(CultureInfo.InvariantCulture, $"{at.Layer}/{Kind(at)}/{b.Feature} (on word {b.OnWord:F2}, overall {b.Overall:F3})"))));
            return Task.FromResult(0);
        }));
        return command;
    }

    private static string Kind(Site site) => site.Kind switch { SiteKind.ResidPost => "res", SiteKind.MlpOut => "mlp", _ => "att" };

    private static void WriteReadme(string outDir, ModelFolder folder, ActivationCorpus corpus, TopKTrainingOptions options, List<string> rows, bool jumpRelu)
    {
        var sb = new StringBuilder();
        sb.AppendLine($"# SAEs for {folder.Manifest.Name}");
        sb.AppendLine();
        sb.AppendLine("Written by `featureflow sae train`; one SAELens folder per site (`cfg.json` + `sae_weights.safetensors`).");
        sb.AppendLine();
        sb.AppendLine(CultureInfo.InvariantCulture, $"Training: {(jumpRelu ? "JumpReLU export of " : "")}TopK SAEs, k = {options.K}, {options.Epochs} epochs, batch {options.BatchSize}, Adam lr {options.LearningRate}, seed {options.Seed}; dead features resampled every {options.ResampleEverySteps} steps (not in the last epoch).");
        sb.AppendLine(CultureInfo.InvariantCulture, $"Corpus: {corpus.Manifest.TotalTokens:N0} tokens of the model's own stories (`featureflow collect`, seed {corpus.Manifest.Source.Seed}, temperature {corpus.Manifest.Source.Temperature}, top-p {corpus.Manifest.Source.TopP}); the last {options.HeldOutFraction:P0} of tokens is held out.");
        sb.AppendLine();
        sb.AppendLine("Held-out figures: FVU = Σ‖x − x̂‖² / Σ‖x − x̄‖²; L0 = mean active features per token; dead = features that never fire on the held-out tokens.");
        sb.AppendLine();
        sb.AppendLine("| site | d_sae | k | held-out FVU | held-out L0 | dead | train FVU |");
        sb.AppendLine("|---|---:|---:|---:|---:|---:|---:|");
        foreach (var r in rows) sb.AppendLine(r);
        sb.AppendLine();
        sb.AppendLine("Rebuild:");
        sb.AppendLine();
        sb.AppendLine("    featureflow collect --out artifacts/corpus");
        sb.AppendLine(CultureInfo.InvariantCulture, $"    featureflow sae train --corpus artifacts/corpus --k {options.K} --epochs {options.Epochs} --seed {options.Seed}");
        Directory.CreateDirectory(outDir);
        File.WriteAllText(Path.Combine(outDir, "README.md"), sb.ToString());
    }
}
