using System.CommandLine;
using System.Globalization;
using System.Text;
using FeatureFlow.Engine;
using FeatureFlow.Evaluation;
using FeatureFlow.Flow;
using FeatureFlow.Models.Folder;
using FeatureFlow.Sae;
using FeatureFlow.Steering.Packs;

namespace FeatureFlow.Cli;

public static class SteerCommand
{
    public static Command Build(TextWriter output, TextWriter error)
    {
        var command = new Command("steer", "Build, evaluate and convert steering packs.");
        command.Subcommands.Add(BuildPack(output, error));
        command.Subcommands.Add(Report(output, error));
        command.Subcommands.Add(ExportGguf(output, error));
        command.Subcommands.Add(ImportGguf(output, error));
        return command;
    }

    private static Option<string?> PacksOption() => new("--packs") { Description = "pack folder (default: the model folder's packs/)" };

    private static string PacksDirectory(ModelFolder folder, string? packs) => packs ?? Path.Combine(folder.Directory, "packs");

    private static SteeringPack LoadPack(ModelFolder folder, string? packs, string name) =>
        SteeringPack.Read(Path.Combine(PacksDirectory(folder, packs), name + SteeringPack.Extension), folder.Manifest);

    private static Command BuildPack(TextWriter output, TextWriter error)
    {
        var name = new Option<string>("--name") { Description = "pack name (file NAME.pack.safetensors)", Required = true };
        var seed = new Option<string?>("--seed") { Description = "seed feature: build from its flow graph (blocks.L.hook_resid_post/N or L/res/N)" };
        var features = new Option<string?>("--features") { Description = "explicit comma-separated features instead of a flow graph" };
        var mode = new Option<PackMode>("--mode") { Description = "SingleLayer, Cumulative or Baseline", DefaultValueFactory = _ => PackMode.Cumulative };
        var layer = new Option<int?>("--layer") { Description = "l for SingleLayer and Cumulative (default: the graph's last layer)" };
        var schedule = new Option<PackSchedule>("--schedule") { Description = "Constant, Linear or Exponential", DefaultValueFactory = _ => PackSchedule.Constant };
        var operation = new Option<PackOperation>("--operation") { Description = "Promote (s), Rescale (r) or Clamp (c)", DefaultValueFactory = _ => PackOperation.Promote };
        var value = new Option<float>("--value") { Description = "s, r or c", DefaultValueFactory = _ => 1f };
        var linearEnd = new Option<float>("--linear-end") { Description = "Linear: coefficient at l_end (s*)", DefaultValueFactory = _ => 1f };
        var alpha = new Option<float>("--alpha") { Description = "Exponential: s·e^(alpha·l)", DefaultValueFactory = _ => -0.05f };
        var relative = new Option<bool>("--relative") { Description = "Exponential: l counted from l_start" };
        var units = new Option<string>("--units") { Description = "raw, or threshold (promote/clamp in units of each feature's threshold)", DefaultValueFactory = _ => "raw" };
        var description = new Option<string>("--description") { DefaultValueFactory = _ => "" };
        var themeWords = new Option<string?>("--theme-words") { Description = "comma-separated words that mark the theme (for steer report)" };
        var strength = new Option<float>("--default-strength") { DefaultValueFactory = _ => 1f };
        var range = new Option<string>("--range") { Description = "recommended strength range lo,hi", DefaultValueFactory = _ => "0,2" };
        var (cut, module) = FlowCommand.GraphThresholdOptions();
        var model = ServeCommand.ModelOption();
        var saes = SaeCommand.SaesOption();
        var map = FlowCommand.MapOption();
        var packs = PacksOption();
        var command = new Command("build", "Turn a feature's flow graph (or a feature list) into a multi-layer steering pack.")
        {
            name, seed, features, mode, layer, schedule, operation, value, linearEnd, alpha, relative, units, description, themeWords, strength, range, cut, module, model, saes, map, packs,
        };
        command.SetAction((parse, _) => CliApp.Guard(error, () =>
        {
            var folder = ModelFolder.Open(parse.GetValue(model)!);
            var set = SaeSet.Load(SaeCommand.SaeDirectory(folder, parse.GetValue(saes)), folder.Manifest.Architecture);
            FlowGraph? graph = null;
            IReadOnlyList<FeatureId> list = [];
            if (parse.GetValue(seed) is { } s)
                graph = FlowGraph.Build(FlowCommand.LoadMap(folder, parse.GetValue(map), error), FeatureId.Parse(s),
                    new FlowGraphOptions { ResidualCut = parse.GetValue(cut), ModuleThreshold = parse.GetValue(module) });
            else if (parse.GetValue(features) is { } f) list = f.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries).Select(FeatureId.Parse).ToArray();
            else throw new ArgumentException("give --seed (a flow graph) or --features (an explicit list)");
            var bounds = parse.GetValue(range)!.Split(',').Select(v => float.Parse(v, CultureInfo.InvariantCulture)).ToArray();
            var pack = PackBuilder.Build(graph, list, set, folder.Manifest, new PackBuildOptions
            {
                Name = parse.GetValue(name)!,
                Description = parse.GetValue(description)!,
                Mode = parse.GetValue(mode),
                Layer = parse.GetValue(layer),
                Schedule = parse.GetValue(schedule),
                Operation = parse.GetValue(operation),
                Value = parse.GetValue(value),
                LinearEnd = parse.GetValue(linearEnd),
                ExponentialAlpha = parse.GetValue(alpha),
                ExponentialRelative = parse.GetValue(relative),
                ThresholdUnits = parse.GetValue(units) switch { "raw" => false, "threshold" => true, var u => throw new ArgumentException($"--units must be raw or threshold, not '{u}'") },
                DefaultStrength = parse.GetValue(strength),
                RecommendedRange = bounds,
                ThemeWords = parse.GetValue(themeWords)?.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries) ?? [],
                BuildCommand = "featureflow " + string.Join(' ', parse.Tokens.Select(t => t.Value.Contains(' ') ? $"\"{t.Value}\"" : t.Value)),
            });
            var dir = PacksDirectory(folder, parse.GetValue(packs));
            Directory.CreateDirectory(dir);
            var path = Path.Combine(dir, pack.Name + SteeringPack.Extension);
            pack.Write(path);
            if (graph is not null) File.WriteAllText(Path.Combine(dir, pack.Name + ".svg"), graph.ToSvg());
            output.WriteLine($"wrote {path}: {pack.Terms.Count} terms at {string.Join(", ", pack.Terms.Select(t => t.Site.HookName).Distinct())} (sha256 {pack.Metadata.ContentSha256[..12]})");
            return Task.FromResult(0);
        }));
        return command;
    }

    private static Command Report(TextWriter output, TextWriter error)
    {
        var model = ServeCommand.ModelOption();
        var packs = PacksOption();
        var seeds = new Option<int>("--seeds") { DefaultValueFactory = _ => new PackEvaluationOptions().Seeds };
        var tokens = new Option<int>("--tokens") { DefaultValueFactory = _ => new PackEvaluationOptions().Tokens };
        var write = new Option<bool>("--write-readme") { Description = "write the pack folder's README.md with the results" };
        var results = new Option<string>("--results")
        {
            Description = "figures folder of `eval results`; its packs.json adds each shipped multi-layer pack's " +
                "sweep curve",
            DefaultValueFactory = _ => "docs/steering-results",
        };
        var command = new Command("report", "Evaluate every pack (same seeds with and without it): seed-feature activation, theme-word rate, perplexity under the unsteered model.")
        {
            model, packs, seeds, tokens, write, results,
        };
        command.SetAction((parse, _) => CliApp.Guard(error, () =>
        {
            var folder = ModelFolder.Open(parse.GetValue(model)!);
            var dir = PacksDirectory(folder, parse.GetValue(packs));
            var options = new PackEvaluationOptions { Seeds = parse.GetValue(seeds), Tokens = parse.GetValue(tokens) };
            var markdown = Readme(folder, dir, parse.GetValue(results)!, options, error);
            if (parse.GetValue(write)) File.WriteAllText(Path.Combine(dir, "README.md"), markdown);
            output.Write(markdown);
            return Task.FromResult(0);
        }));
        return command;
    }

    /// <summary>
    /// Evaluates every pack of <paramref name="packsDir"/> and returns its README: the results table, then per pack
    /// its description, flow graph, recipe and examples, and for a multi-layer pack that <c>eval results --ship</c>
    /// recorded in <paramref name="resultsDir"/>'s packs.json, its sweep curve and the sweep's cells at its strength.
    /// </summary>
    public static string Readme(ModelFolder folder, string packsDir, string resultsDir, PackEvaluationOptions options,
        TextWriter error)
    {
        var catalog = new SteeringCatalog(PackRegistry.Load(packsDir, folder.Manifest),
            SaeSet.Load(Path.Combine(folder.Directory, "saes"), folder.Manifest.Architecture));
        foreach (var refused in catalog.Packs.Errors)
            error.WriteLine($"featureflow: refused {refused.Path}: {refused.Message}");
        using var engine = new GenerationEngine(folder,
            new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu });
        var results = new List<(SteeringPack Pack, PackEvaluationResult Result)>();
        var bar = new ProgressBar(error, "steer report", "packs");
        foreach (var pack in catalog.Packs.Packs.OrderBy(p => p.Name, StringComparer.Ordinal))
        {
            results.Add((pack, PackEvaluation.Evaluate(engine, pack, catalog.Saes, options)));
            bar.Report(results.Count, catalog.Packs.Packs.Count);
        }
        var shipped = ShippedPack.Load(resultsDir).ToDictionary(p => p.Name);
        var link = Path.GetRelativePath(packsDir, resultsDir).Replace('\\', '/');
        return PackReadme(folder, results, options, shipped, link);
    }

    private static string PackReadme(ModelFolder folder, List<(SteeringPack Pack, PackEvaluationResult Result)> results,
        PackEvaluationOptions options, IReadOnlyDictionary<string, ShippedPack> shipped, string resultsLink)
    {
        var sb = new StringBuilder();
        sb.AppendLine($"# Steering packs for {folder.Manifest.Name}");
        sb.AppendLine();
        sb.AppendLine("Each pack is one file (`NAME.pack.safetensors`: per-site tensors + JSON metadata) that the server loads at start-up;");
        sb.AppendLine("apply one with a steering term `{\"pack\": {\"name\": \"NAME\", \"strength\": 1.0}}` (strength 0 is the unsteered model, 1 the pack as built; values between interpolate).");
        sb.AppendLine("`NAME.svg` is the flow graph the pack was built from.");
        sb.AppendLine();
        sb.AppendLine(CultureInfo.InvariantCulture, $"Evaluation (`featureflow steer report --write-readme`): for seeds 1..{options.Seeds}, {options.Tokens} tokens from BOS at temperature {options.Temperature}, top-p {options.TopP}, with and without the pack at its default strength. Feature activation = the seed feature's mean SAE activation over the generated tokens; theme-word rate = share of words in the pack's theme list; perplexity = of the generated text under the unsteered model (coherence: lower is better). Mean ± 95% interval over seeds.");
        sb.AppendLine();
        sb.AppendLine("| pack | seed feature | strength | feature activation (unsteered → steered) | theme-word rate (unsteered → steered) | perplexity (unsteered → steered) |");
        sb.AppendLine("|---|---|---:|---|---|---|");
        foreach (var (_, r) in results)
            sb.AppendLine(CultureInfo.InvariantCulture, $"| `{r.Pack}` | `{r.SeedFeature}` | {r.Strength} | {r.Unsteered.FeatureActivation} → {r.Steered.FeatureActivation} | {r.Unsteered.ThemeWordRate} → {r.Steered.ThemeWordRate} | {r.Unsteered.Perplexity} → {r.Steered.Perplexity} |");
        foreach (var (pack, r) in results)
        {
            var m = pack.Metadata;
            sb.AppendLine();
            sb.AppendLine($"## `{m.Name}`");
            sb.AppendLine();
            sb.AppendLine(m.Description);
            sb.AppendLine();
            sb.AppendLine($"![flow graph of {m.Seed}]({m.Name}.svg)");
            sb.AppendLine();
            sb.AppendLine(CultureInfo.InvariantCulture, $"- seed `{m.Seed}`; {m.Operation}, mode {m.Mode}, schedule {m.Schedule}, units {m.Units}; default strength {m.DefaultStrength}, recommended {m.RecommendedRange[0]}–{m.RecommendedRange[^1]}");
            sb.AppendLine($"- terms: {string.Join(", ", m.Sources.Select(s => FormattableString.Invariant($"`{s.Feature}` ({s.Role}, cos {s.Score:F2})")))}");
            sb.AppendLine($"- theme words: {string.Join(", ", m.ThemeWords)}");
            sb.AppendLine($"- sha256 `{m.ContentSha256}`");
            sb.AppendLine($"- built with: `{m.BuildCommand}`");
            sb.AppendLine($"- seed 1 unsteered: \"{Escape(r.Unsteered.Example)}\"");
            sb.AppendLine($"- seed 1 steered: \"{Escape(r.Steered.Example)}\"");
            var multiLayer = pack.Terms.Select(t => t.Site.Layer).Distinct().Count() > 1;
            if (multiLayer && shipped.TryGetValue(m.Name, out var sweep)) SweepSection(sb, sweep, resultsLink);
        }
        return sb.ToString();
    }

    /// <summary>A multi-layer pack's sweep: its curve against single layers and seed, cells at its strength.</summary>
    private static void SweepSection(StringBuilder sb, ShippedPack sweep, string resultsLink)
    {
        var inv = CultureInfo.InvariantCulture;
        sb.AppendLine();
        sb.AppendLine(inv, $"Default strength chosen by `featureflow eval results --ship` " +
            $"(`docs/steering-results.md`) from the sweep of theme `{sweep.Theme}` ({sweep.Sweep} units): " +
            $"the strength of {sweep.Family} with the " +
            $"highest combined score (behaviour × coherence) among those keeping perplexity ≤ " +
            $"{sweep.MaxPerplexityRatio:G3} × unsteered with behaviour above unsteered. Its curve against each " +
            $"single layer of the flow graph and the seed alone (95% intervals):");
        sb.AppendLine();
        sb.AppendLine($"![sweep of {sweep.Name}]({resultsLink}/{sweep.Figure})");
        sb.AppendLine();
        sb.AppendLine("| sweep cell (n generations) | strength | theme rate | behaviour | perplexity | combined |");
        sb.AppendLine("|---|---:|---|---|---|---|");
        foreach (var c in sweep.Rows)
        {
            var mine = c.Cell.StartsWith(sweep.Family, StringComparison.Ordinal);
            var label = mine ? $"**{c.Cell}** (this pack)" : c.Cell;
            sb.AppendLine(inv, $"| {label} ({c.N}) | {c.Strength:G4} | {c.ThemeRate} | {c.Behaviour} | " +
                $"{c.Perplexity} | {c.Combined} |");
        }
    }

    private static string Escape(string s) => s.Replace("\n", " ", StringComparison.Ordinal).Replace("|", "\\|", StringComparison.Ordinal);

    private static Command ExportGguf(TextWriter output, TextWriter error)
    {
        var name = new Argument<string>("PACK") { Description = "pack name" };
        var outFile = new Option<string>("--out") { Description = "control-vector file", Required = true };
        var strength = new Option<float?>("--strength") { Description = "strength baked into the vectors (default: the pack's)" };
        var strict = new Option<bool>("--strict")
        {
            Description = "fail (and write nothing) if any term has no llama.cpp equivalent",
        };
        var model = ServeCommand.ModelOption();
        var packs = PacksOption();
        var command = new Command("export-gguf",
            "Write a pack's additive resid_post terms at blocks 1.. as a llama.cpp control vector "
            + "(blocks.N.hook_resid_post → direction.N; llama.cpp never steers block 0).")
        {
            name, outFile, strength, strict, model, packs,
        };
        command.SetAction((parse, _) => CliApp.Guard(error, () =>
        {
            var folder = ModelFolder.Open(parse.GetValue(model)!);
            var pack = LoadPack(folder, parse.GetValue(packs), parse.GetValue(name)!);
            var path = parse.GetValue(outFile)!;
            if (parse.GetValue(strict) && ControlVectorGguf.Unexpressible(pack) is { Count: > 0 } refused)
                throw new InvalidDataException($"--strict: {refused.Count} terms of pack '{pack.Name}' have no "
                    + $"llama.cpp equivalent, nothing written: {string.Join("; ", refused)}");
            var strengthValue = parse.GetValue(strength) ?? pack.Metadata.DefaultStrength;
            var layers = folder.Manifest.Architecture.Layers;
            var skipped = ControlVectorGguf.Write(pack, strengthValue, layers, "llama", path);
            foreach (var s in skipped) error.WriteLine($"featureflow: left out {s}");
            output.WriteLine($"wrote {path}: {pack.Terms.Count - skipped.Count} of {pack.Terms.Count} terms");
            return Task.FromResult(0);
        }));
        return command;
    }

    private static Command ImportGguf(TextWriter output, TextWriter error)
    {
        var file = new Argument<string>("FILE") { Description = "llama.cpp control vector (.gguf)" };
        var name = new Option<string>("--name") { Description = "pack name", Required = true };
        var model = ServeCommand.ModelOption();
        var packs = PacksOption();
        var command = new Command("import-gguf",
            "Read a llama.cpp control vector into a pack "
            + "(direction.N → blocks.N.hook_resid_post, the block llama.cpp steers with it).")
        {
            file, name, model, packs,
        };
        command.SetAction((parse, _) => CliApp.Guard(error, () =>
        {
            var folder = ModelFolder.Open(parse.GetValue(model)!);
            var path = parse.GetValue(file)!;
            var architecture = folder.Manifest.Architecture;
            var contents = ControlVectorGguf.Read(path, architecture.DModel, architecture.Layers);
            foreach (var ignored in contents.Ignored) error.WriteLine($"featureflow: not imported {ignored}");
            var terms = contents.Terms;
            if (terms.Count == 0)
                throw new InvalidDataException($"{path}: no direction that llama.cpp applies (direction.1 and up)");
            var pack = new SteeringPack(new PackMetadata
            {
                Name = parse.GetValue(name)!,
                Description = $"imported from llama.cpp control vector {Path.GetFileName(path)}",
                ModelFingerprint = SteeringPack.Fingerprint(folder.Manifest),
                Operation = "promote",
                Mode = "imported",
                Schedule = "as stored",
                Sources = terms.Select(t => new PackSource($"direction.{t.Site.Layer}", 1f, "control-vector"))
                    .ToArray(),
            }, terms);
            var dir = PacksDirectory(folder, parse.GetValue(packs));
            Directory.CreateDirectory(dir);
            pack.Write(Path.Combine(dir, pack.Name + SteeringPack.Extension));
            output.WriteLine($"imported {terms.Count} directions into pack '{pack.Name}'");
            return Task.FromResult(0);
        }));
        return command;
    }
}
