using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using FeatureFlow.Engine;
using FeatureFlow.Flow;
using FeatureFlow.Models;
using FeatureFlow.Models.Folder;
using FeatureFlow.Models.Formats;
using FeatureFlow.Sae;
using FeatureFlow.Steering.Packs;

namespace FeatureFlow.Evaluation;

/// <summary>The shipped model, its SAEs and flow map, as a results run reads them.</summary>
public sealed record ResultsInputs(ModelFolder Folder, SaeSet Saes, FlowMap Map, string MapPath);

/// <summary>One step of a results run: how long it took when it ran, and whether this run reused it.</summary>
public sealed record StepTiming(string Step, double Seconds, bool Reused);

/// <summary>One sweep of one theme: its plan, rows, cells, the work folder holding its report and charts.</summary>
public sealed record ThemeSweepOutcome(ThemeSpec Theme, ThemeSweepSpec Sweep, SweepPlan Plan, SweepResult Result,
    IReadOnlyList<CellSummary> Cells, string Directory, IReadOnlyList<string> Charts)
{
    public FlowGraph Graph => Plan.Graph!;

    /// <summary>Families (mode, layer) that steer the seed alone: the baseline under another name.</summary>
    public bool SeedOnly(CellKey cell) => Plan.Families.Any(f => f.Mode == cell.Mode && f.Layer == cell.Layer
        && f.Pack.Metadata.Sources.All(s => s.Role == "seed"));

    public ThemeVerdicts Verdicts(int smallStrengths) => ResultsVerdicts.Judge(Cells, Graph.LStart, Graph.LEnd,
        Theme.Seed.Site.Layer, SeedOnly, smallStrengths);
}

/// <summary>Everything a results run measured, for <see cref="ResultsDocument"/>.</summary>
public sealed record ResultsRun(ResultsSpec Spec, MatchValidationReport Matches, IReadOnlyList<FidelityRow> Fidelity,
    IReadOnlyList<ChainLengths> Chains, IReadOnlyList<ThemeSweepOutcome> Sweeps, IReadOnlyList<StepTiming> Steps)
{
    public ThemeSweepOutcome Sweep(string theme, string variant) =>
        Sweeps.First(s => s.Theme.Name == theme && s.Sweep.Variant == variant);
}

/// <summary>
/// Runs every measurement of <c>featureflow eval results</c> in-process, resumably, under one work folder:
/// match validation (<c>matches/</c>), hook fidelity on fresh stories (<c>fidelity/</c>), chain lengths of the
/// shipped flow map (<c>chains/</c>), and one strength sweep per theme and variant (<c>sweeps/THEME/VARIANT/</c>,
/// resumed row by row by <see cref="SweepRunner"/>). The first three keep their result in <c>result.json</c> with
/// the settings they ran under and are reused while those match. <c>inputs.json</c> holds hashes of the model, SAEs
/// and flow map; a folder measured on other inputs is refused rather than mixed.
/// </summary>
public static class ResultsRunner
{
    public const string InputsFile = "inputs.json", ResultFile = "result.json";

    private static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
        Converters = { new JsonStringEnumConverter() },
    };

    /// <param name="progress">a progress callback for a step label and its unit</param>
    public static async Task<ResultsRun> RunAsync(ResultsInputs inputs, ResultsSpec spec, string workDirectory,
        int maxBatchRows, TextWriter log, Func<string, string, Action<long, long>> progress,
        CancellationToken cancellationToken = default)
    {
        Directory.CreateDirectory(workDirectory);
        CheckInputs(inputs, workDirectory);
        var steps = new List<StepTiming>();
        var folder = inputs.Folder;
        var architecture = folder.Manifest.Architecture;
        var cpu = new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu };

        // Parallelism changes how fast, not what: each token draws from its own stream.
        var matches = Cached(Path.Combine(workDirectory, "matches"), spec.Matches with { Parallelism = 1 },
            "eval matches", log, steps, () =>
            {
                using var decoder = new HookedDecoder(folder.HookedGraphPath, architecture, cpu);
                var report = MatchValidator.Run(decoder, inputs.Saes, inputs.Map, folder.LoadTokenizer().BosId,
                    spec.Matches, Int(progress("eval matches", "tokens")));
                report.Write(Path.Combine(workDirectory, "matches"));
                return new MatchesResult(report.Options, report.Summary, report.Agreement, report.Rows,
                    report.StoriesTime, report.EvaluationTime, report.Provider);
            }).ToReport();

        var fidelity = Cached(Path.Combine(workDirectory, "fidelity"), spec.Fidelity, "sae fidelity", log, steps,
            () => MeasureFidelity(inputs, spec.Fidelity, cpu, progress));

        var chains = Cached(Path.Combine(workDirectory, "chains"), spec.Chains, "sae chains", log, steps,
            () => spec.Chains.Select(c => FidelityChains.Measure(c.Label, inputs.Map,
                new FlowGraphOptions { ResidualCut = c.Cut, ModuleThreshold = c.ModuleThreshold })).ToArray());

        var plans = spec.Themes.SelectMany(theme =>
        {
            var graph = FlowGraph.Build(inputs.Map, theme.Seed,
                new FlowGraphOptions { ResidualCut = theme.Cut, ModuleThreshold = theme.ModuleThreshold });
            return theme.Sweeps.Select(sweep => (Theme: theme, Sweep: sweep,
                Plan: SweepPlan.ForFeature(graph, inputs.Saes, folder.Manifest, Recipe(theme, sweep),
                    Options(spec.Sweep, sweep))));
        }).ToArray();
        using var engine = new GenerationEngine(folder, cpu with
        {
            MaxBatchRows = maxBatchRows,
            // The runner bounds what it has in flight itself; one (prompt, seed) group must always fit the queue.
            MaxQueuedRequests = Math.Max(256, plans.Max(p => p.Plan.Arms.Count) + 2 * maxBatchRows),
            MaxQueuedTokens = long.MaxValue,
        });
        var sweeps = new List<ThemeSweepOutcome>();
        foreach (var (theme, sweep, plan) in plans)
        {
            var label = $"sweep {theme.Name}/{sweep.Variant}";
            var directory = Path.Combine(workDirectory, "sweeps", theme.Name, sweep.Variant);
            var clock = Stopwatch.StartNew();
            var result = await SweepRunner.RunAsync(engine, inputs.Saes, plan, directory, null,
                Int(progress(label, "generations")), cancellationToken).ConfigureAwait(false);
            var files = SweepReport.WriteAll(directory, plan, result,
                $"featureflow eval results (theme {theme.Name}, sweep {sweep.Variant})", clock.Elapsed);
            steps.Add(new StepTiming(label, clock.Elapsed.TotalSeconds, result.Generated == 0));
            log.WriteLine($"{label}: {result.Generated} generations run, {result.Skipped} reused, " +
                          $"{clock.Elapsed.TotalSeconds:F1} s");
            sweeps.Add(new ThemeSweepOutcome(theme, sweep, plan, result, SweepSummary.Of(result.Rows), directory,
                files.Where(f => f.EndsWith(".png", StringComparison.Ordinal)).ToArray()));
        }
        return new ResultsRun(spec, matches, fidelity, chains, sweeps, steps);
    }

    private static FeatureRecipe Recipe(ThemeSpec theme, ThemeSweepSpec sweep) => new()
    {
        Operation = theme.Operation,
        Value = sweep.Value,
        ThresholdUnits = sweep.ThresholdUnits,
        ThemeWords = theme.ThemeWords,
    };

    private static SweepOptions Options(ResultsSweepSettings settings, ThemeSweepSpec sweep) => new()
    {
        Strengths = sweep.Strengths,
        Seeds = settings.Seeds,
        Tokens = settings.Tokens,
        Temperature = settings.Temperature,
        TopP = settings.TopP,
        Prompts = settings.Prompts,
    };

    /// <summary>As <c>sae fidelity --tokens N --seed S</c> on the CPU: fresh 128-token stories, TopK sites.</summary>
    private static FidelityRow[] MeasureFidelity(ResultsInputs inputs, ResultsFidelitySettings settings,
        EngineOptions cpu, Func<string, string, Action<long, long>> progress)
    {
        var folder = inputs.Folder;
        var dir = Directory.CreateTempSubdirectory("featureflow-results-fidelity-").FullName;
        try
        {
            const int story = ResultsFidelitySettings.StoryTokens;
            var sequences = (settings.Tokens + story - 1) / story;
            using (var decoder = new HookedDecoder(folder.HookedGraphPath, folder.Manifest.Architecture, cpu))
                ActivationCollector.Collect(decoder, folder.LoadTokenizer(), folder.Manifest.Name, new CollectOptions
                {
                    GeneratedSequences = sequences, SequenceLength = story, BatchRows = Math.Min(sequences, 64),
                    Seed = settings.Seed,
                }, dir, progress("sae fidelity", "tokens"));
            var corpus = ActivationCorpus.Open(dir);
            var d = corpus.Manifest.DModel;
            return Site.All(folder.Manifest.Architecture.Layers)
                .Where(site => inputs.Saes.BySite.TryGetValue(site, out var sae)
                               && sae.Activation == SaeActivation.TopK)
                .Select(site => Fidelity.Measure("shipped", inputs.Saes.BySite[site],
                    corpus.ReadSite(site).AsSpan(0, settings.Tokens * d)))
                .ToArray();
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    /// <summary>A step's result from <c>result.json</c> if computed under these settings, else computed now.</summary>
    private static T Cached<TSettings, T>(string directory, TSettings settings, string step, TextWriter log,
        List<StepTiming> steps, Func<T> compute)
    {
        Directory.CreateDirectory(directory);
        var path = Path.Combine(directory, ResultFile);
        var key = JsonSerializer.Serialize(settings, Json);
        if (File.Exists(path) && JsonSerializer.Deserialize<CachedStep<T>>(File.ReadAllText(path), Json) is { } cached
            && cached.Settings == key)
        {
            log.WriteLine($"{step}: reused {path} (computed in {cached.Seconds:F1} s)");
            steps.Add(new StepTiming(step, cached.Seconds, true));
            return cached.Result;
        }
        var clock = Stopwatch.StartNew();
        var result = compute();
        var seconds = clock.Elapsed.TotalSeconds;
        File.WriteAllText(path, JsonSerializer.Serialize(new CachedStep<T>(key, seconds, result), Json));
        log.WriteLine($"{step}: {seconds:F1} s");
        steps.Add(new StepTiming(step, seconds, false));
        return result;
    }

    private sealed record CachedStep<T>(string Settings, double Seconds, T Result);

    /// <summary>What the document needs of a match validation (its samples stay in the work folder's CSV).</summary>
    private sealed record MatchesResult(MatchValidationOptions Options, IReadOnlyList<MatchSummaryRow> Summary,
        IReadOnlyList<HookAgreement> Agreement, long Rows, TimeSpan StoriesTime, TimeSpan EvaluationTime,
        string Provider)
    {
        public MatchValidationReport ToReport() =>
            new(Options, [], Summary, Agreement, Rows, StoriesTime, EvaluationTime, Provider);
    }

    private static void CheckInputs(ResultsInputs inputs, string workDirectory)
    {
        var current = new SortedDictionary<string, string>(StringComparer.Ordinal)
        {
            ["model"] = SteeringPack.Fingerprint(inputs.Folder.Manifest),
            ["saes_sha256"] = HashFolder(inputs.Saes.Directory),
            ["flow_map_sha256"] = Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(inputs.MapPath))),
        };
        var path = Path.Combine(workDirectory, InputsFile);
        if (File.Exists(path))
        {
            var stored = JsonSerializer.Deserialize<Dictionary<string, string>>(File.ReadAllText(path)) ?? [];
            var differing = current.Where(kv => stored.GetValueOrDefault(kv.Key) != kv.Value).Select(kv => kv.Key)
                .ToArray();
            if (differing.Length > 0)
                throw new InvalidOperationException($"{workDirectory} holds results measured on other inputs " +
                    $"({string.Join(", ", differing)} differ); give another --work, or delete it to start over");
            return;
        }
        File.WriteAllText(path, JsonSerializer.Serialize(current, Json));
    }

    /// <summary>SHA-256 over every file of a folder, in path order, each as its relative path and bytes.</summary>
    private static string HashFolder(string directory)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var file in Directory.GetFiles(directory, "*", SearchOption.AllDirectories)
                     .Order(StringComparer.Ordinal))
        {
            hash.AppendData(Encoding.UTF8.GetBytes(Path.GetRelativePath(directory, file).Replace('\\', '/') + "\0"));
            hash.AppendData(File.ReadAllBytes(file));
        }
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }

    private static Action<int, int> Int(Action<long, long> report) => (done, total) => report(done, total);
}
