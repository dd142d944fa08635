using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using FeatureFlow.Engine;
using FeatureFlow.Evaluation;
using FeatureFlow.Flow;
using FeatureFlow.Models.Folder;
using FeatureFlow.Sae;
using FeatureFlow.Steering.Packs;

namespace FeatureFlow.Cli;

/// <summary>
/// <c>featureflow eval sweep</c>: a seed feature's flow-graph packs (or one pack) over modes × layers × schedules ×
/// strengths × seeds × prompts, each (prompt, seed)'s arms as rows of one batch; rows.csv, summary.csv, PNG charts
/// and report.md in --out, resumable.
/// </summary>
public static class EvalSweepCommand
{
    /// <summary>Holds --judge-url's bearer token, so the key is in neither the command line nor the report.</summary>
    public const string JudgeKeyVariable = "FEATUREFLOW_JUDGE_API_KEY";

    public static Command Build(TextWriter output, TextWriter error)
    {
        var defaults = new SweepOptions();
        var inv = CultureInfo.InvariantCulture;
        var seedFeature = new Option<string?>("--seed-feature")
        {
            Description = "seed feature (3/res/145 or blocks.3.hook_resid_post/145): packs come from its flow graph",
        };
        var pack = new Option<string?>("--pack")
        {
            Description = "an existing pack, swept over strengths as built (--modes, --layers, --schedules, " +
                "--operation, --value and --units do not apply)",
        };
        var packs = new Option<string?>("--packs") { Description = "pack folder (default: the model folder's packs/)" };
        var themeWords = new Option<string?>("--theme-words")
        {
            Description = "comma-separated theme words (default: the pack's)",
        };
        var operation = new Option<PackOperation>("--operation")
        {
            Description = "Promote (s), Rescale (r) or Clamp (c)", DefaultValueFactory = _ => PackOperation.Promote,
        };
        var value = new Option<float?>("--value")
        {
            Description = "s, r or c at strength 1 (default: promote 4; rescale 0, so strength k is r = 1 − k)",
        };
        var units = new Option<string>("--units")
        {
            Description = "raw, or threshold (promote/clamp in units of each feature's threshold)",
            DefaultValueFactory = _ => "raw",
        };
        var modes = new Option<string>("--modes")
        {
            Description = "single (each layer of the span), cumulative (l_start..l for each l), baseline (seed only)",
            DefaultValueFactory = _ => "single,cumulative,baseline",
        };
        var layers = new Option<string?>("--layers")
        {
            Description = "layers l for single and cumulative (default: the graph's span)",
        };
        var strengths = new Option<string>("--strengths")
        {
            Description = "term strengths k (0 = unsteered, 1 = as built)",
            DefaultValueFactory = _ => string.Join(",", defaults.Strengths.Select(s => s.ToString(inv))),
        };
        var schedules = new Option<string>("--schedules")
        {
            Description = "constant, linear, exponential", DefaultValueFactory = _ => "constant",
        };
        var seeds = new Option<int>("--seeds")
        {
            Description = "sampling seeds 1..N per cell and prompt", DefaultValueFactory = _ => defaults.Seeds,
        };
        var tokens = new Option<int>("--tokens")
        {
            Description = "tokens per generation", DefaultValueFactory = _ => defaults.Tokens,
        };
        var temperature = new Option<float>("--temperature") { DefaultValueFactory = _ => defaults.Temperature };
        var topP = new Option<float>("--top-p") { DefaultValueFactory = _ => defaults.TopP };
        var prompts = new Option<string?>("--prompts")
        {
            Description = "file with one prompt per line (# comments and blank lines skipped, <bos> = BOS alone); " +
                "default: BOS and three story openings",
        };
        var behaviour = new Option<string?>("--behaviour")
        {
            Description = "theme (theme-word rate) or activation (seed feature's active share); " +
                "default: theme when there are theme words",
        };
        var goal = new Option<string?>("--goal") { Description = "promote or suppress (default: suppress for rescale)" };
        var cut = new Option<float?>("--cut") { Description = "flow graph residual cut (default: as `flow graph`)" };
        var module = new Option<float?>("--module-threshold")
        {
            Description = "flow graph module threshold (default: as `flow graph`)",
        };
        var outDir = new Option<string?>("--out")
        {
            Description = "output folder (default artifacts/eval/SUBJECT); an existing sweep there resumes",
        };
        var rows = new Option<int>("--max-batch-rows")
        {
            Description = "engine rows per decode step", DefaultValueFactory = _ => 64,
        };
        var judgeUrl = new Option<string?>("--judge-url")
        {
            Description = "OpenAI-compatible server for an LLM judge (off by default; bearer token from " +
                $"${JudgeKeyVariable})",
        };
        var judgeModel = new Option<string?>("--judge-model") { Description = "the judge's model name" };
        var judgeTopic = new Option<string?>("--judge-topic")
        {
            Description = "topic the judge rates (default: the theme words)",
        };
        var model = ServeCommand.ModelOption();
        var saes = SaeCommand.SaesOption();
        var map = FlowCommand.MapOption();
        var command = new Command("sweep",
            "Sweep a seed feature's flow-graph steering (single-layer, cumulative, baseline) or a pack over " +
            "strengths, seeds and prompts: judge-free scores per generation, 95% intervals per cell, charts, a report.")
        {
            seedFeature, pack, packs, themeWords, operation, value, units, modes, layers, strengths, schedules, seeds,
            tokens, temperature, topP, prompts, behaviour, goal, cut, module, outDir, rows, judgeUrl, judgeModel,
            judgeTopic, model, saes, map,
        };
        command.SetAction((parse, ct) => CliApp.Guard(error, async () =>
        {
            var clock = Stopwatch.StartNew();
            var folder = ModelFolder.Open(parse.GetValue(model)!);
            var set = SaeSet.Load(SaeCommand.SaeDirectory(folder, parse.GetValue(saes)), folder.Manifest.Architecture);
            var words = List(parse.GetValue(themeWords));
            var options = new SweepOptions
            {
                Modes = List(parse.GetValue(modes)).Select(m => Enum<SweepMode>(m, "--modes")).ToArray(),
                Layers = parse.GetValue(layers) is { } l ? List(l).Select(v => int.Parse(v, inv)).ToArray() : null,
                Strengths = List(parse.GetValue(strengths)).Select(v => float.Parse(v, inv)).ToArray(),
                Schedules = List(parse.GetValue(schedules)).Select(s => Enum<PackSchedule>(s, "--schedules")).ToArray(),
                Seeds = parse.GetValue(seeds),
                Tokens = parse.GetValue(tokens),
                Temperature = parse.GetValue(temperature),
                TopP = parse.GetValue(topP),
                Prompts = parse.GetValue(prompts) is { } file ? ReadPrompts(file) : SweepOptions.DefaultPrompts,
                Behaviour = parse.GetValue(behaviour) switch
                {
                    null => null,
                    "theme" => BehaviourMeasure.ThemeWords,
                    "activation" => BehaviourMeasure.FeatureActivity,
                    var b => throw new ArgumentException($"--behaviour must be theme or activation, not '{b}'"),
                },
                Goal = parse.GetValue(goal) is { } g ? Enum<SteeringGoal>(g, "--goal") : null,
            };

            SweepPlan plan;
            if (parse.GetValue(seedFeature) is { } seed)
            {
                if (parse.GetValue(pack) is not null)
                    throw new ArgumentException("give --seed-feature or --pack, not both");
                var graphDefaults = new FlowGraphOptions();
                var flowMap = FlowCommand.LoadMap(folder, parse.GetValue(map), error);
                var graph = FlowGraph.Build(flowMap, FeatureId.Parse(seed), graphDefaults with
                {
                    ResidualCut = parse.GetValue(cut) ?? graphDefaults.ResidualCut,
                    ModuleThreshold = parse.GetValue(module) ?? graphDefaults.ModuleThreshold,
                });
                plan = SweepPlan.ForFeature(graph, set, folder.Manifest, new FeatureRecipe
                {
                    Operation = parse.GetValue(operation),
                    Value = parse.GetValue(value),
                    ThresholdUnits = parse.GetValue(units) switch
                    {
                        "raw" => false,
                        "threshold" => true,
                        var u => throw new ArgumentException($"--units must be raw or threshold, not '{u}'"),
                    },
                    ThemeWords = words,
                }, options);
            }
            else if (parse.GetValue(pack) is { } name)
            {
                var dir = parse.GetValue(packs) ?? Path.Combine(folder.Directory, "packs");
                var loaded = SteeringPack.Read(Path.Combine(dir, name + SteeringPack.Extension), folder.Manifest);
                plan = SweepPlan.ForPack(loaded, folder.Manifest, words, options);
            }
            else throw new ArgumentException("give --seed-feature (a flow graph's packs) or --pack (an existing pack)");

            var directory = parse.GetValue(outDir)
                ?? Path.Combine("artifacts", "eval", plan.Subject.Replace('/', '_').Replace(' ', '-'));
            var maxRows = parse.GetValue(rows);
            using var engine = new GenerationEngine(folder, new EngineOptions
            {
                ExecutionProvider = ExecutionProviderPreference.Cpu,
                MaxBatchRows = maxRows,
                // The sweep bounds what it has in flight itself; one (prompt, seed) group must always fit the queue.
                MaxQueuedRequests = Math.Max(256, plan.Arms.Count + 2 * maxRows),
                MaxQueuedTokens = long.MaxValue,
            });
            using var http = new HttpClient { Timeout = TimeSpan.FromMinutes(2) };
            var judge = parse.GetValue(judgeUrl) is { } url
                ? Judge(http, url, parse.GetValue(judgeModel), parse.GetValue(judgeTopic), plan.ThemeWords)
                : null;

            var bar = new ProgressBar(error, "eval sweep", "generations");
            var result = await SweepRunner.RunAsync(engine, set, plan, directory, judge,
                (done, total) => bar.Report(done, total), ct);
            var commandLine = "featureflow " +
                string.Join(' ', parse.Tokens.Select(t => t.Value.Contains(' ') ? $"\"{t.Value}\"" : t.Value));
            var files = SweepReport.WriteAll(directory, plan, result, commandLine, clock.Elapsed);
            foreach (var best in SweepSummary.BestPerMode(SweepSummary.Of(result.Rows)))
                output.WriteLine($"best {best.Cell.Mode}: {best.Label}  combined {best.Combined}  " +
                                 $"perplexity {best.Perplexity}");
            var written = string.Join(", ", files.Select(f => Path.Combine(directory, f)));
            var seconds = clock.Elapsed.TotalSeconds.ToString("F1", inv);
            output.WriteLine($"{result.Generated} generations run, {result.Skipped} already done, {seconds} s");
            output.WriteLine($"wrote {written}");
            return 0;
        }));
        return command;
    }

    private static OpenAiJudge Judge(HttpClient http, string url, string? model, string? topic,
        IReadOnlyList<string> words)
    {
        if (model is null) throw new ArgumentException("--judge-url needs --judge-model");
        topic ??= words.Count > 0
            ? string.Join(", ", words)
            : throw new ArgumentException("the judge needs a topic: give --judge-topic or --theme-words");
        return new OpenAiJudge(http, OpenAiJudge.ChatCompletionsUri(url), model, topic,
            Environment.GetEnvironmentVariable(JudgeKeyVariable));
    }

    private static string[] List(string? text) =>
        text?.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries) ?? [];

    private static T Enum<T>(string text, string option) where T : struct, Enum =>
        System.Enum.TryParse<T>(text, ignoreCase: true, out var v) && System.Enum.IsDefined(v)
            ? v
            : throw new ArgumentException(
                $"{option}: '{text}' is not one of {string.Join(", ", System.Enum.GetNames<T>()).ToLowerInvariant()}");

    private static string[] ReadPrompts(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"prompt file not found: {path}", path);
        return File.ReadAllLines(path)
            .Where(l => l.Trim().Length > 0 && !l.TrimStart().StartsWith('#'))
            .Select(l => l.Trim() == "<bos>" ? "" : l)
            .ToArray();
    }
}
