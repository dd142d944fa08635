using System.Diagnostics;
using System.Globalization;
using System.Text;
using FeatureFlow.Engine;
using FeatureFlow.Models;
using FeatureFlow.Models.Export;
using FeatureFlow.Models.Folder;
using FeatureFlow.Models.Llama2c;
using FeatureFlow.Onnx;
using FeatureFlow.Onnx.CustomOps;
using FeatureFlow.Onnx.Ir;
using Microsoft.ML.OnnxRuntime;

namespace FeatureFlow.Benchmarks;

/// <summary>
/// <c>fused</c>: single-row greedy decode steps of the plain-operator and the fused-operator graph (both without
/// hooks, exported in memory from the shipped checkpoint) for both KV layouts. The four step in lockstep (at each
/// position every variant runs its step, the order rotating), so drift in the machine falls on all of them alike.
/// Also: node counts as exported and after ONNX Runtime's optimizer, and managed bytes allocated per step.
/// </summary>
public static class FusedComparison
{
    private static readonly CultureInfo Invariant = CultureInfo.InvariantCulture;

    public sealed record Options(int Rounds, int WarmUps, int PromptTokens, int Steps);

    /// <summary>One graph variant: what it is, its bytes, and the stepper that runs it.</summary>
    private sealed record Variant(KvCacheLayout Layout, OperatorSet Operators, ModelProto Model, IDecodeStepper Stepper)
    {
        public string Name => $"{Layout}, {Operators}";
    }

    /// <summary>
    /// The shipped model for a lockstep benchmark (this one and <see cref="HookComparison"/>): its folder, weights and
    /// a story prompt of <paramref name="promptTokens"/>, the settings checked to fit its context.
    /// </summary>
    internal static (ModelFolder Folder, LlamaWeights Weights, int[] Prompt) ShippedModel(int rounds, int warmUps,
        int promptTokens, int steps)
    {
        if (rounds < 1 || steps < 1 || promptTokens < 1 || warmUps < 0)
            throw new ArgumentException("--rounds, --steps and --prompt must be at least 1 and --warm-ups at least 0; "
                + $"got {rounds}, {steps}, {promptTokens} and {warmUps}");
        var folder = ModelFolder.Open(Path.Combine(EngineComparison.RepoRoot(), "models", "stories260k"));
        var arch = folder.Manifest.Architecture;
        if (promptTokens + steps > arch.ContextLength)
            throw new ArgumentException($"prompt {promptTokens} + steps {steps} exceed the context length "
                + arch.ContextLength);
        var story = folder.LoadTokenizer().Encode(Workloads.Story, addBos: true);
        if (story.Length < promptTokens)
            throw new ArgumentException($"the story has {story.Length} tokens, fewer than --prompt {promptTokens}");
        var checkpoint = Llama2cCheckpoint.Read(Path.Combine(folder.Directory, folder.Manifest.Provenance.Checkpoint.File));
        return (folder, checkpoint.Weights, story[..promptTokens]);
    }

    public static int Run(Options options, TextWriter output, TextWriter log)
    {
        var (folder, weights, prompt) = ShippedModel(options.Rounds, options.WarmUps, options.PromptTokens,
            options.Steps);
        var arch = folder.Manifest.Architecture;
        var capacity = options.PromptTokens + options.Steps;
        // The engine's session settings: CPU, ORT_ENABLE_ALL, one intra-op thread.
        var engineOptions = new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu, IntraOpThreads = 1 };

        var variants = new List<Variant>();
        try
        {
            foreach (var layout in Enum.GetValues<KvCacheLayout>())
                foreach (var operators in Enum.GetValues<OperatorSet>())
                {
                    var model = LlamaGraphExporter.Export(arch, weights, new HookedGraphOptions
                    {
                        Hooks = false, SiteOutputs = false, KvLayout = layout, Operators = operators,
                    }, folder.Manifest.Name);
                    var session = SessionFactory.Create(OnnxModelFile.Serialize(model), engineOptions).Session;
                    IDecodeStepper stepper = layout == KvCacheLayout.SharedBuffer
                        ? new SharedBufferStepper(session, arch, capacity)
                        : new ConcatStepper(session, arch, capacity);
                    variants.Add(new Variant(layout, operators, model, stepper));
                }
            var (times, bytes, agreement) = Measure(options.Rounds, options.WarmUps, options.Steps,
                variants.Select(v => (v.Name, v.Stepper)).ToList(), prompt, log);
            output.Write(Report(options, variants, times, bytes, agreement, engineOptions));
            return 0;
        }
        finally
        {
            foreach (var v in variants) v.Stepper.Dispose();
        }
    }

    /// <summary>Per variant every measured step's time (µs) and allocated bytes; and whether the greedy ids agreed.
    /// </summary>
    /// <remarks>Also what <see cref="HookComparison"/> measures with: any single-row steppers, in lockstep.</remarks>
    /// <param name="firstAgreeing">Variants from this one on must give the same greedy ids (earlier ones, e.g. an
    /// unsteered graph beside steered ones, need not).</param>
    internal static (List<double>[] Times, List<long>[] Bytes, string Agreement) Measure(int rounds, int warmUps,
        int steps, IReadOnlyList<(string Name, IDecodeStepper Stepper)> variants, int[] prompt, TextWriter log,
        int firstAgreeing = 0)
    {
        var times = variants.Select(_ => new List<double>(rounds * steps)).ToArray();
        var bytes = variants.Select(_ => new List<long>(rounds * steps)).ToArray();
        string? disagreement = null;
        var n = variants.Count;
        for (var round = -warmUps; round < rounds; round++)
        {
            var tokens = variants.Select(v => new List<int> { v.Stepper.Prefill(prompt) }).ToArray();
            for (var step = 0; step < steps; step++)
                for (var k = 0; k < n; k++)
                {
                    var i = (k + step) % n; // rotate who goes first, so no variant always runs right after another
                    var before = GC.GetAllocatedBytesForCurrentThread();
                    var start = Stopwatch.GetTimestamp();
                    var next = variants[i].Stepper.Step(tokens[i][^1]);
                    var elapsed = Stopwatch.GetElapsedTime(start);
                    var allocated = GC.GetAllocatedBytesForCurrentThread() - before;
                    tokens[i].Add(next);
                    if (round < 0) continue;
                    times[i].Add(elapsed.TotalMicroseconds);
                    bytes[i].Add(allocated);
                }
            var first = firstAgreeing;
            for (var i = first + 1; i < n && disagreement is null; i++)
                if (!tokens[i].SequenceEqual(tokens[first]))
                    disagreement = $"Greedy ids DISAGREE: {variants[i].Name} departs from {variants[first].Name} at " +
                        $"generated token {tokens[i].Zip(tokens[first]).TakeWhile(p => p.First == p.Second).Count()}.";
            log.WriteLine(round < 0 ? "warm-up round done" : $"round {round + 1}/{rounds} done");
        }
        var agreed = string.Join(", ", variants.Skip(firstAgreeing).Select(v => v.Name));
        return (times, bytes, disagreement ?? $"Greedy ids: {agreed} gave the same {steps + 1} token ids in every "
            + "round.");
    }

    private static string Report(Options options, List<Variant> variants, List<double>[] times, List<long>[] bytes,
        string agreement, EngineOptions engineOptions)
    {
        var sb = new StringBuilder();
        void Line(string s = "") => sb.AppendLine(s);
        Line("## Fused-operator graphs vs plain-operator graphs: single-row decode step (issue P8)");
        Line();
        Line($"Command ({options.PromptTokens}-token prompt of story text, BOS first; {options.Steps} greedy decode "
            + $"steps per round; {options.WarmUps} warm-up round(s), then {options.Rounds} rounds; the four graphs "
            + "step in lockstep, the order rotating each step; the step is timed around the stepper's call: bind "
            + "values, ONNX Runtime run, arg-max):");
        Line();
        Line($"    dotnet run -c Release --project tests/FeatureFlow.Benchmarks -- fused --rounds {options.Rounds} "
            + $"--warm-ups {options.WarmUps} --prompt {options.PromptTokens} --steps {options.Steps}");
        Line();
        Line($"Machine: {EngineComparison.MachineDescription()}; ONNX Runtime 1.31.0 CPU execution provider, "
            + $"ORT_ENABLE_ALL, {engineOptions.IntraOpThreads} intra-op thread; .NET {Environment.Version}; "
            + $"{DateTime.UtcNow:yyyy-MM-dd}. Graphs: stories260K without hooks, exported in memory.");
        Line();
        Line($"| KV layout | operators | nodes as exported | nodes after ORT optimization | step µs median "
            + $"({options.Rounds}×{options.Steps} steps) | p10 – p90 | fused ÷ plain step time (median of paired "
            + "steps) | allocated B per step (mean) |");
        Line("|---|---|---:|---:|---:|---:|---:|---:|");
        var optimized = variants.Select(v => OptimizedOperators(v.Model)).ToArray();
        for (var i = 0; i < variants.Count; i++)
        {
            var v = variants[i];
            var sorted = times[i].Order().ToArray();
            var plain = variants.FindIndex(p => p.Layout == v.Layout && p.Operators == OperatorSet.Plain);
            var ratio = v.Operators == OperatorSet.Plain
                ? "–"
                : Median(times[i].Zip(times[plain], (f, p) => f / p)).ToString("F2", Invariant);
            Line($"| {v.Layout} | {v.Operators} | {v.Model.Graph.Node.Count} | {optimized[i].Values.Sum()} "
                + $"| {Percentile(sorted, 0.5):F1} | {Percentile(sorted, 0.1):F1} – {Percentile(sorted, 0.9):F1} "
                + $"| {ratio} | {bytes[i].Average():F1} |");
        }
        Line();
        Line(agreement);
        Line();
        Line("Operators after ONNX Runtime's optimizer (SessionOptions.OptimizedModelFilePath, same settings):");
        Line();
        for (var i = 0; i < variants.Count; i++)
            Line($"- {variants[i].Name}: " + string.Join(", ",
                optimized[i].OrderByDescending(o => o.Value).ThenBy(o => o.Key, StringComparer.Ordinal)
                    .Select(o => $"{o.Key} {o.Value}")));
        Line();
        Line("Allocated bytes are managed bytes on the calling thread during a step "
            + "(GC.GetAllocatedBytesForCurrentThread); ONNX Runtime's own (native) allocations are not in them. The "
            + "Concat stepper makes its OrtValue views anew each step because the present grows; the SharedBuffer "
            + "stepper's binding is made once.");
        return sb.ToString();
    }

    /// <summary>Operator type counts of the graph ONNX Runtime runs after its optimizer, read back from the file
    /// it writes.</summary>
    internal static Dictionary<string, int> OptimizedOperators(ModelProto model)
    {
        var directory = Directory.CreateTempSubdirectory("featureflow-fused-");
        try
        {
            var path = Path.Combine(directory.FullName, "optimized.onnx");
            using (var sessionOptions = new SessionOptions
            {
                GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL,
                IntraOpNumThreads = 1,
                OptimizedModelFilePath = path,
                // Its warning that an ORT_ENABLE_ALL model is machine-specific holds, and does not matter for a count.
                LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR,
            })
            {
                FeatureFlowOps.Register(sessionOptions);
                using (new InferenceSession(OnnxModelFile.Serialize(model), sessionOptions)) { }
            }
            return OnnxModelFile.Read(path).Graph.Node
                .GroupBy(n => n.Domain is "" or "ai.onnx" ? n.OpType : $"{n.Domain}.{n.OpType}")
                .ToDictionary(g => g.Key, g => g.Count());
        }
        finally
        {
            directory.Delete(recursive: true);
        }
    }

    internal static double Median(IEnumerable<double> values) => Percentile(values.Order().ToArray(), 0.5);

    /// <summary>The p-quantile of sorted values, interpolating between neighbours.</summary>
    internal static double Percentile(double[] sorted, double p)
    {
        var at = p * (sorted.Length - 1);
        var low = (int)Math.Floor(at);
        var high = Math.Min(low + 1, sorted.Length - 1);
        return sorted[low] + (at - low) * (sorted[high] - sorted[low]);
    }
}
