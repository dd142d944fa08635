using System.Globalization;
using System.Text;
using FeatureFlow.Engine;
using FeatureFlow.Models;
using FeatureFlow.Models.Export;
using FeatureFlow.Models.Folder;
using FeatureFlow.Onnx;
using FeatureFlow.Onnx.Ir;
using FeatureFlow.Steering;

namespace FeatureFlow.Benchmarks;

/// <summary>
/// <c>hooks</c>: what a steered decode step costs for each way of writing the hooks. Single-row greedy decode steps of
/// the engine's batched graph (fused operators, shared KV buffer) without hooks, and with hooks steered by the heavy
/// spec (every site: an add term and all rescale/clamp slots) written once in standard ONNX operators and once as
/// ai.featureflow custom operators (each with the norm after it, in its place); all exported in memory from the shipped checkpoint and stepped in
/// lockstep, as <see cref="FusedComparison"/> does.
/// </summary>
public static class HookComparison
{
    public const string SectionHeading = "## Steering hooks: ONNX operators vs custom operators (issue P8)";

    public sealed record Options(int Rounds, int WarmUps, int PromptTokens, int Steps, string? WritePath);

    public static int Run(Options options, TextWriter output, TextWriter log)
    {
        var (folder, weights, prompt) = FusedComparison.ShippedModel(options.Rounds, options.WarmUps,
            options.PromptTokens, options.Steps);
        var arch = folder.Manifest.Architecture;
        var capacity = options.PromptTokens + options.Steps;
        var engineOptions = new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu, IntraOpThreads = 1 };
        var shape = new SteeringShape(arch.Layers, arch.DModel, new HookedGraphOptions().SlotsPerSite);
        var heavy = new SteeringCompiler(shape).Compile(Workloads.Heavy(shape)).Generated;

        var graphs = new List<(string Name, ModelProto Model, SteeringTensors? Steering)>
        {
            ("no hooks, unsteered", Export(arch, weights, hooks: false, HookOperators.Onnx, folder), null),
            ("hooks in ONNX operators, heavy spec",
                Export(arch, weights, hooks: true, HookOperators.Onnx, folder), heavy),
            ("hooks as custom operators, heavy spec",
                Export(arch, weights, hooks: true, HookOperators.CustomOperator, folder), heavy),
        };
        var steppers = new List<(string Name, IDecodeStepper Stepper)>();
        try
        {
            foreach (var (name, model, steering) in graphs)
                steppers.Add((name, new SharedBufferStepper(
                    SessionFactory.Create(OnnxModelFile.Serialize(model), engineOptions).Session, arch, capacity,
                    steering)));
            var (times, bytes, agreement) = FusedComparison.Measure(options.Rounds, options.WarmUps, options.Steps,
                steppers, prompt, log, firstAgreeing: 1);
            var report = Report(options, graphs.Select(g => (g.Name, g.Model)).ToList(), times, bytes, agreement);
            output.Write(report);
            if (options.WritePath is { } path)
            {
                EngineComparison.WriteSection(path, report, SectionHeading);
                log.WriteLine($"wrote the section to {path}");
            }
            return 0;
        }
        finally
        {
            foreach (var (_, stepper) in steppers) stepper.Dispose();
        }
    }

    private static ModelProto Export(ModelArchitecture arch, LlamaWeights weights, bool hooks, HookOperators form,
        ModelFolder folder) =>
        LlamaGraphExporter.Export(arch, weights, new HookedGraphOptions
        {
            Hooks = hooks, SiteOutputs = false, KvLayout = KvCacheLayout.SharedBuffer, Operators = OperatorSet.Fused,
            HookOperators = form,
        }, folder.Manifest.Name);

    private static string Report(Options options, List<(string Name, ModelProto Model)> graphs, List<double>[] times,
        List<long>[] bytes, string agreement)
    {
        var sb = new StringBuilder();
        void Line(string s = "") => sb.AppendLine(s);
        Line(SectionHeading);
        Line();
        Line($"The engine's batched graph for stories260K (fused operators, shared KV buffer; exported in memory from the "
            + "shipped checkpoint, without site outputs) three times: without hooks, unsteered; with hooks written in "
            + "standard ONNX operators (eleven per hook, the steering inputs cut per site at the top of the graph); "
            + "with the hooks as ai.featureflow custom operators (C#, reading their sites straight out of the stacked "
            + "steering inputs), each together with the norm after it in one node that takes the norm's place: a "
            + "SteeringHookNorm for each block's attn_out and a SteeringHookPairNorm for its mlp_out and resid_post. "
            + "Both hooked graphs are steered by the heavy spec: "
            + "every one of the 15 sites "
            + "has an add term and all 8 rescale/clamp slots. One row; "
            + $"{options.PromptTokens}-token story prompt; {options.Steps} greedy decode steps per round; "
            + $"{options.WarmUps} warm-up round(s), then {options.Rounds} rounds; the three graphs step in lockstep, "
            + "the order rotating each step; a step is timed around bind, ONNX Runtime run and arg-max.");
        Line();
        Line($"    dotnet run -c Release --project tests/FeatureFlow.Benchmarks -- hooks --rounds {options.Rounds} "
            + $"--warm-ups {options.WarmUps} --prompt {options.PromptTokens} --steps {options.Steps} "
            + "--write docs/benchmarks.md");
        Line();
        Line($"Machine: {EngineComparison.MachineDescription()}; ONNX Runtime 1.31.0 CPU execution provider, "
            + $"ORT_ENABLE_ALL, 1 intra-op thread; .NET {Environment.Version}; {DateTime.UtcNow:yyyy-MM-dd}.");
        Line();
        Line($"| graph | nodes as exported | nodes after ORT optimization | step µs median ({options.Rounds}×"
            + $"{options.Steps} steps) | p10 – p90 | unsteered ÷ this step time (median of paired steps) "
            + "| allocated B per step |");
        Line("|---|---:|---:|---:|---:|---:|---:|");
        for (var i = 0; i < graphs.Count; i++)
        {
            var sorted = times[i].Order().ToArray();
            var ratio = i == 0 ? "1.00" : FusedComparison.Median(times[0].Zip(times[i], (u, h) => u / h))
                .ToString("F2", CultureInfo.InvariantCulture);
            Line($"| {graphs[i].Name} | {graphs[i].Model.Graph.Node.Count} "
                + $"| {FusedComparison.OptimizedOperators(graphs[i].Model).Values.Sum()} "
                + $"| {FusedComparison.Percentile(sorted, 0.5):F1} | {FusedComparison.Percentile(sorted, 0.1):F1} – "
                + $"{FusedComparison.Percentile(sorted, 0.9):F1} | {ratio} | {bytes[i].Average():F1} |");
        }
        Line();
        Line(agreement + " The two hooked graphs' logits agree within 1e-4 relative L2 (FusedGraphTests).");
        return sb.ToString();
    }
}
