using System.CommandLine;
using System.Globalization;
using System.Text;
using FeatureFlow.Engine;
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
        command.Subcommands.Add(Fidelity(output, error));
        command.Subcommands.Add(Calibrate(output, error));
        command.Subcommands.Add(Chains(output, error));
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
        var thresholds = ThresholdRuleOption(defaults.Thresholds);
        var command = new Command("train", "Train TopK SAEs on collected activations and write SAELens folders plus a README with FVU, L0 and dead features per site.")
        {
            model, corpus, saes, sites, k, dSae, epochs, lr, seed, jumpRelu, thresholds,
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
                LearningRate = parse.GetValue(lr), Seed = parse.GetValue(seed), Thresholds = parse.GetValue(thresholds),
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
        var site = new Option<string?>("--site") { Description = "hook name the SAE reads (required for Sparsify; GemmaScope takes it from a release path …/gemma-scope-…-res|mlp/layer_N/…)" };
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
            Sae.SaeSet.Check(sae, folder.Manifest.Architecture, source, folder.Sites.ToHashSet());
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

    private static Option<ThresholdRule> ThresholdRuleOption(ThresholdRule fallback) => new("--thresholds")
    {
        Description = "how the steering hook's per-feature JumpReLU thresholds imitate top-k: MaxJaccard (agree best "
            + "with top-k's picks, per feature), RateMatched (fire as often as top-k selects the feature) or "
            + "SelectedPercentile (10th percentile of the feature's selected activations; the first rule)",
        DefaultValueFactory = _ => fallback,
    };

    private static Command Fidelity(TextWriter output, TextWriter error)
    {
        var model = ServeCommand.ModelOption();
        var saes = new Option<string[]>("--saes")
        {
            Description = "SAE folder to measure (repeatable; default: the model folder's saes/)",
        };
        var corpus = new Option<string?>("--corpus")
        {
            Description = "activation corpus to measure on (default: fresh stories, see --tokens)",
        };
        var tokens = new Option<int>("--tokens")
        {
            Description = "tokens to measure: the first N of --corpus (0: all), or N fresh ones in stories of 128 "
                + "tokens from --seed",
            DefaultValueFactory = _ => 8192,
        };
        var seed = new Option<ulong>("--seed")
        {
            Description = "first story seed of fresh tokens (the shipped SAEs trained on seeds 1..1000)",
            DefaultValueFactory = _ => 500_000UL,
        };
        var outDir = new Option<string>("--out")
        {
            Description = "folder for fidelity.csv and fidelity.md", DefaultValueFactory = _ => "artifacts/fidelity",
        };
        var provider = ServeCommand.ProviderOption();
        var command = new Command("fidelity", "Measure per site how closely the steering hook's JumpReLU stand-in "
            + "follows each TopK SAE: active counts, Jaccard of the active sets, missed and extra activation mass, and "
            + "FVU decoding either.")
        {
            model, saes, corpus, tokens, seed, outDir, provider,
        };
        command.SetAction((parse, _) => CliApp.Guard(error, () =>
        {
            var folder = ModelFolder.Open(parse.GetValue(model)!);
            var dirs = parse.GetValue(saes) is { Length: > 0 } given ? given : [SaeDirectory(folder, null)];
            var sets = dirs.Select(d => (Label: d, Set: Sae.SaeSet.Load(d, folder.Manifest.Architecture))).ToArray();
            var count = parse.GetValue(tokens);
            var corpusDir = parse.GetValue(corpus);
            var fresh = corpusDir is null ? Directory.CreateTempSubdirectory("featureflow-fidelity-").FullName : null;
            try
            {
                if (fresh is not null)
                    CollectFresh(folder, parse.GetValue(provider), count, parse.GetValue(seed), fresh, error);
                var data = ActivationCorpus.Open(fresh ?? corpusDir!);
                var rows = new List<Evaluation.FidelityRow>();
                foreach (var site in Site.All(folder.Manifest.Architecture.Layers))
                {
                    if (!sets.Any(s => s.Set.BySite.ContainsKey(site))) continue;
                    var activations = First(data.ReadSite(site), data.Manifest.DModel, count);
                    foreach (var (label, set) in sets)
                        if (set.BySite.TryGetValue(site, out var sae) && sae.Activation == SaeActivation.TopK)
                            rows.Add(Evaluation.Fidelity.Measure(label, sae, activations));
                }
                if (rows.Count == 0)
                    throw new InvalidDataException("no TopK SAE to measure (JumpReLU and ReLU SAEs fire as stored)");
                rows = rows.OrderBy(r => Array.IndexOf(dirs, r.Saes)).ThenBy(r => r.Site.Index).ToList();
                var dir = parse.GetValue(outDir)!;
                Directory.CreateDirectory(dir);
                File.WriteAllText(Path.Combine(dir, "fidelity.csv"), Evaluation.Fidelity.ToCsv(rows));
                var table = Evaluation.Fidelity.ToMarkdown(rows);
                var source = fresh is null ? $"the first {rows[0].Tokens:N0} tokens of {corpusDir}"
                    : $"{rows[0].Tokens:N0} fresh tokens (stories of 128 tokens, seeds from {parse.GetValue(seed)})";
                File.WriteAllText(Path.Combine(dir, "fidelity.md"), $"# Hook fidelity on {source}\n\n{table}");
                output.Write(table);
                output.WriteLine($"wrote fidelity.csv and fidelity.md to {dir} (measured on {source})");
            }
            finally
            {
                if (fresh is not null) Directory.Delete(fresh, true);
            }
            return Task.FromResult(0);
        }));
        return command;
    }

    /// <summary>Stories the SAEs never saw, 128 tokens each so that a few thousand tokens span many stories.</summary>
    private static void CollectFresh(ModelFolder folder, ExecutionProviderPreference provider, int tokens, ulong seed,
        string dir, TextWriter error)
    {
        if (tokens < 128)
            throw new ArgumentException($"--tokens {tokens}: fresh tokens come in stories of 128, ask for 128 or more");
        var sequences = (tokens + 127) / 128;
        var architecture = folder.Manifest.Architecture;
        var engine = new EngineOptions { ExecutionProvider = provider };
        using var decoder = new HookedDecoder(folder.HookedGraphPath, architecture, engine);
        var options = new CollectOptions
        {
            GeneratedSequences = sequences, SequenceLength = 128, BatchRows = Math.Min(sequences, 64), Seed = seed,
        };
        var bar = new ProgressBar(error, "collect", "tokens");
        ActivationCollector.Collect(decoder, folder.LoadTokenizer(), folder.Manifest.Name, options, dir, bar.Report);
    }

    private static float[] First(float[] activations, int d, long tokens) =>
        tokens <= 0 || tokens * d >= activations.Length ? activations : activations[..(int)(tokens * d)];

    private static Command Calibrate(TextWriter output, TextWriter error)
    {
        var model = ServeCommand.ModelOption();
        var saes = SaesOption();
        var corpus = CorpusOption();
        var rule = ThresholdRuleOption(new TopKTrainingOptions().Thresholds);
        var tokens = new Option<int>("--tokens")
        {
            Description = "corpus tokens to calibrate on, from the start (the trainer takes the first 100,000 of its "
                + "training tokens)",
            DefaultValueFactory = _ => 100_000,
        };
        var sites = new Option<string[]>("--site")
        {
            Description = "hook name to calibrate (repeatable; default: every TopK SAE)",
        };
        var outDir = new Option<string?>("--out")
        {
            Description = "write calibrated copies of the SAE folders here instead of rewriting them in place",
        };
        var command = new Command("calibrate", "Rewrite the steering-hook thresholds of TopK SAE folders from a "
            + "corpus (weights, and so flow maps, are untouched; packs keep the thresholds they were built with until "
            + "rebuilt).")
        {
            model, saes, corpus, rule, tokens, sites, outDir,
        };
        command.SetAction((parse, _) => CliApp.Guard(error, () =>
        {
            var folder = ModelFolder.Open(parse.GetValue(model)!);
            var source = SaeDirectory(folder, parse.GetValue(saes));
            var data = ActivationCorpus.Open(parse.GetValue(corpus)!);
            var chosen = parse.GetValue(sites) is { Length: > 0 } names ? names.Select(Site.Parse).ToHashSet() : null;
            var (target, count, thresholds) = (parse.GetValue(outDir), parse.GetValue(tokens), parse.GetValue(rule));
            var done = 0;
            foreach (var dir in Directory.GetDirectories(source).Order(StringComparer.Ordinal))
            {
                if (!File.Exists(Path.Combine(dir, SaeLensFormat.ConfigFile))) continue;
                var at = target is null ? dir : Path.Combine(target, Path.GetFileName(dir));
                if (target is not null)
                {
                    // The copy is a whole SAE set, so that it loads (and measures) like the original.
                    Directory.CreateDirectory(at);
                    foreach (var file in Directory.GetFiles(dir))
                        File.Copy(file, Path.Combine(at, Path.GetFileName(file)), true);
                }
                var sae = SaeLensFormat.Read(at);
                Sae.SaeSet.Check(sae, folder.Manifest.Architecture, at);
                if (sae.Activation != SaeActivation.TopK || chosen?.Contains(sae.Site) == false) continue;
                var activations = First(data.ReadSite(sae.Site), data.Manifest.DModel, count);
                var clock = System.Diagnostics.Stopwatch.StartNew();
                ThresholdCalibration.Calibrate(sae, activations, thresholds);
                var n = activations.Length / data.Manifest.DModel;
                sae.Metadata["threshold_rule"] = thresholds.ToString();
                sae.Metadata["threshold_calibration"] = string.Create(CultureInfo.InvariantCulture,
                    $"{n} tokens of a corpus of stories from seed {data.Manifest.Source.Seed}");
                SaeLensFormat.WriteThresholds(sae, at);
                done++;
                output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"{sae.Site}: {thresholds} thresholds from {n:N0} tokens "
                    + $"({clock.Elapsed.TotalSeconds:F1} s) → {at}"));
            }
            if (done == 0) throw new InvalidDataException($"{source}: no TopK SAE folder to calibrate");
            return Task.FromResult(0);
        }));
        return command;
    }

    private static Command Chains(TextWriter output, TextWriter error)
    {
        var model = ServeCommand.ModelOption();
        var maps = new Option<string[]>("--map")
        {
            Description = "flow map file (repeatable; default: the model folder's flow map)",
        };
        var cut = new Option<float?>("--cut")
        {
            Description = "residual cosine below which a chain stops (default: the map's chance level)",
        };
        var module = new Option<float?>("--module-threshold")
        {
            Description = "MLP/attention matches below this are dropped (default: chance level; changes module nodes, "
                + "not chain lengths)",
        };
        var argmax = new Option<bool>("--forward-argmax")
        {
            Description = "walk forward by arg-max only (default: backward-consistent)",
        };
        var outDir = new Option<string>("--out")
        {
            Description = "folder for chains.csv and chains.md", DefaultValueFactory = _ => "artifacts/fidelity",
        };
        var command = new Command("chains", "Distribution of flow-graph residual-chain lengths over every residual "
            + "feature as seed, per flow map: how far each dictionary's features are traced through depth.")
        {
            model, maps, cut, module, argmax, outDir,
        };
        command.SetAction((parse, _) => CliApp.Guard(error, () =>
        {
            var folder = ModelFolder.Open(parse.GetValue(model)!);
            var paths = parse.GetValue(maps) is { Length: > 0 } given ? given : [FlowCommand.MapPath(folder, null)];
            foreach (var p in paths)
                if (!File.Exists(p))
                    throw new FileNotFoundException($"no flow map at {p} (run `featureflow flow build`)", p);
            var options = new Flow.FlowGraphOptions
            {
                ResidualCut = parse.GetValue(cut), ModuleThreshold = parse.GetValue(module),
                BackwardConsistentForward = !parse.GetValue(argmax),
            };
            // Each map as stored: a map of other SAEs must not borrow a chance level from the model's own SAEs.
            var results = paths
                .Select(p => Evaluation.FidelityChains.Measure(p, Flow.FlowMap.Load(p), options)).ToArray();
            var dir = parse.GetValue(outDir)!;
            Directory.CreateDirectory(dir);
            File.WriteAllText(Path.Combine(dir, "chains.csv"), Evaluation.FidelityChains.ToCsv(results));
            var table = Evaluation.FidelityChains.ToMarkdown(results);
            File.WriteAllText(Path.Combine(dir, "chains.md"),
                "# Flow-graph residual-chain lengths, every residual feature as seed\n\n" + table);
            output.Write(table);
            output.WriteLine($"wrote chains.csv and chains.md to {dir}");
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
        sb.AppendLine(CultureInfo.InvariantCulture,
            $"Steering-hook thresholds: {options.Thresholds} (`featureflow sae fidelity` measures how well the hook "
            + $"follows top-k).");
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
        sb.AppendLine(CultureInfo.InvariantCulture,
            $"    featureflow sae train --corpus artifacts/corpus --k {options.K} --epochs {options.Epochs} "
            + $"--seed {options.Seed} {(options.DSae > 0 ? $"--d-sae {options.DSae} " : "")}"
            + $"--thresholds {options.Thresholds}");
        Directory.CreateDirectory(outDir);
        File.WriteAllText(Path.Combine(outDir, "README.md"), sb.ToString());
    }
}
