using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using FeatureFlow.Engine;
using FeatureFlow.Flow;
using FeatureFlow.Models.Folder;
using FeatureFlow.Sae;

namespace FeatureFlow.Cli;

public static class FlowCommand
{
    public static Command Build(TextWriter output, TextWriter error)
    {
        var command = new Command("flow", "Build and query flow maps: cross-layer cosine matches of SAE decoders (Laptev et al. 2025).");
        command.Subcommands.Add(BuildMap(output, error));
        command.Subcommands.Add(Explain(output, error));
        command.Subcommands.Add(Graph(output, error));
        command.Subcommands.Add(Stats(output, error));
        command.Subcommands.Add(Bench(output, error));
        return command;
    }

    public static Option<string?> MapOption() => new("--map") { Description = "flow map file (default: the model folder's flow/flow_map.safetensors)" };

    public static string MapPath(ModelFolder folder, string? map) => map ?? Path.Combine(folder.Directory, "flow", FlowMap.FileName);

    /// <summary>
    /// Loads the flow map. A map written before chance levels were stored gets them computed now from the
    /// model's SAEs (the ones it was built from), or, failing that, keeps the absolute thresholds; both
    /// are said on <paramref name="log"/>.
    /// </summary>
    public static FlowMap LoadMap(ModelFolder folder, string? map, TextWriter log)
    {
        var path = MapPath(folder, map);
        if (!File.Exists(path)) throw new FileNotFoundException($"no flow map at {path} (run `featureflow flow build`)", path);
        var flow = FlowMap.Load(path);
        if (flow.HasChanceLevel) return flow;
        var saes = SaeCommand.SaeDirectory(folder, null);
        try
        {
            var cpu = new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu };
            using var matcher = new CosineMatcher(cpu);
            flow = flow.WithChanceLevel(SaeSet.Load(saes, folder.Manifest.Architecture), matcher);
            log.WriteLine($"{path} has no chance level (written before it was stored): computed it from {saes}; " +
                "rerun `featureflow flow build` to store it");
        }
        catch (Exception e) when (e is IOException or InvalidDataException or KeyNotFoundException)
        {
            log.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{path} has no chance level and it cannot be computed ({e.Message}): using the absolute thresholds " +
                $"(categories: residual {FlowThresholds.AbsoluteResidual}, module {FlowThresholds.AbsoluteModule}; " +
                $"graphs: cut {FlowGraphOptions.AbsoluteResidualCut}, module {FlowGraphOptions.AbsoluteModuleThreshold}); " +
                $"rerun `featureflow flow build` to store it"));
        }
        return flow;
    }

    private static Command BuildMap(TextWriter output, TextWriter error)
    {
        var model = ServeCommand.ModelOption();
        var saes = SaeCommand.SaesOption();
        var map = MapOption();
        var provider = ServeCommand.ProviderOption();
        var block = new Option<int>("--block-rows") { Description = "target rows per ONNX Runtime run (bounds memory: rows × features × 4 bytes)", DefaultValueFactory = _ => 2048 };
        var chance = new ChanceLevelOptions();
        var rotations = new Option<int>("--null-rotations")
        {
            Description = "random rotations of each source decoder for the chance level (each is one more match per pair)",
            DefaultValueFactory = _ => chance.Rotations,
        };
        var percentile = new Option<double>("--null-percentile")
        {
            Description = "percentile of the null best cosine that becomes the default threshold",
            DefaultValueFactory = _ => chance.Percentile,
        };
        var nullSeed = new Option<int>("--null-seed")
        {
            Description = "seed of the random rotations", DefaultValueFactory = _ => chance.Seed,
        };
        var command = new Command("build", "Match every residual feature to its top-1 cosine predecessor in R(L-1), M(L) and " +
            "A(L), and every R(L-1) feature forward into R(L); estimate each pair's chance level against randomly rotated " +
            "source decoders.")
        {
            model, saes, map, provider, block, rotations, percentile, nullSeed,
        };
        command.SetAction((parse, _) => CliApp.Guard(error, () =>
        {
            var folder = ModelFolder.Open(parse.GetValue(model)!);
            var set = SaeSet.Load(SaeCommand.SaeDirectory(folder, parse.GetValue(saes)), folder.Manifest.Architecture);
            using var matcher = new CosineMatcher(new EngineOptions { ExecutionProvider = parse.GetValue(provider) }, parse.GetValue(block));
            var bar = new ProgressBar(error, "flow build", "layers");
            var clock = Stopwatch.StartNew();
            var chanceOptions = new ChanceLevelOptions
            {
                Rotations = parse.GetValue(rotations), Percentile = parse.GetValue(percentile), Seed = parse.GetValue(nullSeed),
            };
            var flow = FlowMap.Build(set, folder.Manifest.Architecture.Layers, matcher, (done, total) => bar.Report(done, total),
                chanceOptions);
            var path = MapPath(folder, parse.GetValue(map));
            Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
            flow.Save(path);
            output.WriteLine($"wrote {path} ({flow.Layers} layers, {clock.Elapsed.TotalSeconds:F1} s on {matcher.Provider.Name})");
            return Task.FromResult(0);
        }));
        return command;
    }

    /// <summary>
    /// {feature, resid, mlp, attn, category, category_detail}: each match with its score and the threshold it was
    /// held to; category is the paper's four, category_detail adds the module (processed-mlp, newborn-both, …).
    /// </summary>
    public static JsonObject ExplainJson(FlowMap map, FeatureId feature, FlowThresholds thresholds)
    {
        var p = map.Explain(feature);
        var layer = feature.Site.Layer;
        JsonObject Match((FeatureId Feature, float Score) m, PredecessorKind kind) => new()
        {
            ["feature"] = m.Feature.ToString(),
            ["score"] = Math.Round(m.Score, 6),
            ["threshold"] = Math.Round(map.Threshold(layer, kind, thresholds), 6),
            ["threshold_source"] =
                map.ThresholdSource(kind == PredecessorKind.Resid ? thresholds.Residual : thresholds.Module),
        };
        var category = map.Category(p, thresholds);
        return new JsonObject
        {
            ["feature"] = feature.ToString(),
            ["resid"] = p.Resid is { } r ? Match(r, PredecessorKind.Resid) : null,
            ["mlp"] = Match(p.Mlp, PredecessorKind.Mlp),
            ["attn"] = Match(p.Attn, PredecessorKind.Attn),
            ["category"] = category.Group(),
            ["category_detail"] = category.Name(),
        };
    }

    private static Command Explain(TextWriter output, TextWriter error)
    {
        var feature = new Argument<string>("FEATURE") { Description = "blocks.L.hook_resid_post/N or L/res/N" };
        var model = ServeCommand.ModelOption();
        var map = MapOption();
        var json = new Option<bool>("--json") { Description = "print {feature, resid, mlp, attn, category} as JSON" };
        var (residHigh, moduleHigh) = ThresholdOptions();
        var command = new Command("explain", "Print a residual feature's predecessors in R(L-1), M(L), A(L) with cosine scores, and its category.")
        {
            feature, model, map, json, residHigh, moduleHigh,
        };
        command.SetAction((parse, _) => CliApp.Guard(error, () =>
        {
            var folder = ModelFolder.Open(parse.GetValue(model)!);
            var flow = LoadMap(folder, parse.GetValue(map), error);
            var id = FeatureId.Parse(parse.GetValue(feature)!);
            var result = ExplainJson(flow, id, new FlowThresholds(parse.GetValue(residHigh), parse.GetValue(moduleHigh)));
            if (parse.GetValue(json))
            {
                output.WriteLine(result.ToJsonString());
                return Task.FromResult(0);
            }
            output.WriteLine($"{id} ({id.Short}): {result["category_detail"]}");
            foreach (var key in new[] { "resid", "mlp", "attn" })
                output.WriteLine(result[key] is JsonObject m
                    ? string.Create(CultureInfo.InvariantCulture,
                        $"  {key,-5} {m["feature"]}  cos {(double)m["score"]!:F3}  " +
                        $"(high from {(double)m["threshold"]!:F3}: {m["threshold_source"]})")
                    : $"  {key,-5} (none: layer 0 has no previous residual SAE)");
            return Task.FromResult(0);
        }));
        return command;
    }

    private static (Option<float?> Resid, Option<float?> Module) ThresholdOptions()
    {
        var resid = new Option<float?>("--resid-high")
        {
            Description = "residual score that counts as high at every layer (default: the flow map's chance level per layer)",
        };
        var module = new Option<float?>("--module-high")
        {
            Description = "MLP/attention score that counts as high at every layer (default: the chance level per layer, module)",
        };
        return (resid, module);
    }

    /// <summary>--cut and --module-threshold of flow graphs; unset = the map's chance level per layer (and module).</summary>
    public static (Option<float?> Cut, Option<float?> Module) GraphThresholdOptions()
    {
        var cut = new Option<float?>("--cut")
        {
            Description = "residual cosine below which the chain stops (default: the chance level of each layer's R(L-1)->R(L))",
        };
        var module = new Option<float?>("--module-threshold")
        {
            Description = "MLP/attention matches below this are dropped (default: the chance level of each layer's module)",
        };
        return (cut, module);
    }

    private static Command Graph(TextWriter output, TextWriter error)
    {
        var feature = new Argument<string>("FEATURE") { Description = "seed: blocks.L.hook_resid_post/N or L/res/N" };
        var model = ServeCommand.ModelOption();
        var map = MapOption();
        var (cut, module) = GraphThresholdOptions();
        var argmax = new Option<bool>("--forward-argmax") { Description = "walk forward by arg-max only (default: backward-consistent, falling back to arg-max)" };
        var outDir = new Option<string>("--out") { Description = "folder for FEATURE.json, .dot and .svg", DefaultValueFactory = _ => "artifacts/flow-graphs" };
        var command = new Command("graph", "Trace a feature backward and forward through depth and write its flow graph as JSON, Graphviz DOT and SVG.")
        {
            feature, model, map, cut, module, argmax, outDir,
        };
        command.SetAction((parse, _) => CliApp.Guard(error, () =>
        {
            var folder = ModelFolder.Open(parse.GetValue(model)!);
            var flow = LoadMap(folder, parse.GetValue(map), error);
            var graph = FlowGraph.Build(flow, FeatureId.Parse(parse.GetValue(feature)!), new FlowGraphOptions
            {
                ResidualCut = parse.GetValue(cut), ModuleThreshold = parse.GetValue(module), BackwardConsistentForward = !parse.GetValue(argmax),
            });
            var dir = parse.GetValue(outDir)!;
            Directory.CreateDirectory(dir);
            var stem = Path.Combine(dir, graph.Seed.Short.Replace('/', '_'));
            File.WriteAllText(stem + ".json", graph.ToJson().ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
            File.WriteAllText(stem + ".dot", graph.ToDot());
            File.WriteAllText(stem + ".svg", graph.ToSvg());
            output.WriteLine($"{graph.Seed}: layers {graph.LStart}..{graph.LEnd}, {graph.Nodes.Count} nodes; wrote {stem}.json, .dot, .svg");
            return Task.FromResult(0);
        }));
        return command;
    }

    private static Command Stats(TextWriter output, TextWriter error)
    {
        var model = ServeCommand.ModelOption();
        var map = MapOption();
        var outDir = new Option<string>("--out")
        {
            Description = "folder for categories.csv/.png, scores.csv/.png and chance.csv (default: next to the flow map)",
        };
        var (residHigh, moduleHigh) = ThresholdOptions();
        var command = new Command("stats", "Per-layer category shares, predecessor-score histograms and their chance level, " +
            "as CSV and PNG.")
        {
            model, map, outDir, residHigh, moduleHigh,
        };
        command.SetAction((parse, _) => CliApp.Guard(error, () =>
        {
            var folder = ModelFolder.Open(parse.GetValue(model)!);
            var flow = LoadMap(folder, parse.GetValue(map), error);
            var dir = parse.GetValue(outDir) ?? Path.GetDirectoryName(Path.GetFullPath(MapPath(folder, parse.GetValue(map))))!;
            var stats = FlowStatistics.Compute(flow, new FlowThresholds(parse.GetValue(residHigh), parse.GetValue(moduleHigh)));
            FlowStatistics.Write(stats, dir);
            foreach (var s in stats)
            {
                var counts = FlowCategories.All.Select(c => $"{c.Name()} {s.CategoryCounts[(int)c]}");
                output.WriteLine($"layer {s.Layer}: " + string.Join(", ", counts));
                foreach (var p in s.Pairs)
                    output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"  {p.Kind.ToString().ToLowerInvariant(),-5} threshold {p.Threshold:F3} ({p.ThresholdSource}); " +
                        $"null mean {p.Null?.Mean:F3}; " +
                        $"observed mean {p.ObservedMean:F3}, median {p.ObservedMedian:F3}, {p.ShareAbove:P1} at or above"));
            }
            output.WriteLine($"wrote categories.csv, categories.png, scores.csv, scores.png, chance.csv to {dir}");
            return Task.FromResult(0);
        }));
        return command;
    }

    private static Command Bench(TextWriter output, TextWriter error)
    {
        var features = new Option<int>("--features") { Description = "features per decoder", DefaultValueFactory = _ => 16384 };
        var dModel = new Option<int>("--d-model") { Description = "decoder width", DefaultValueFactory = _ => 2304 };
        var block = new Option<int>("--block-rows") { DefaultValueFactory = _ => 2048 };
        var provider = ServeCommand.ProviderOption();
        var command = new Command("bench", "Time one flow-map match of two synthetic decoders against a plain ONNX Runtime MatMul of the same size, in the same run.")
        {
            features, dModel, block, provider,
        };
        command.SetAction((parse, _) => CliApp.Guard(error, () =>
        {
            var result = FlowBenchmark.Run(parse.GetValue(features), parse.GetValue(dModel), parse.GetValue(block), new EngineOptions { ExecutionProvider = parse.GetValue(provider) });
            output.WriteLine(result.ToMarkdown());
            return Task.FromResult(0);
        }));
        return command;
    }
}
