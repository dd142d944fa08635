using FeatureFlow.Engine;
using FeatureFlow.Models.Export;
using FeatureFlow.Models.Llama2c;
using FeatureFlow.Models.Tests.Gemma2;
using FeatureFlow.Models.Tests.HuggingFace;
using FeatureFlow.Onnx;
using FeatureFlow.Onnx.CustomOps;
using FeatureFlow.Onnx.Ir;
using FeatureFlow.Steering;

namespace FeatureFlow.Models.Tests;

/// <summary>
/// The batched graph of every plain-operator exporter (Llama, GPT-2, Gemma 2) with its hooks as one
/// ai.featureflow.SteeringHook node each, as model folders ship it, against the same graph with the eleven-operator
/// hooks, both run by the engine's <see cref="ModelRunner"/>. (The fused Llama graph's two forms are compared in
/// FeatureFlow.Engine.Tests' FusedGraphTests.)
/// </summary>
public class BatchedHookFormTests : IDisposable
{
    private const double Tolerance = 1e-4;
    private const int DecodeSteps = 8;
    private readonly TempFolder _temp = new();

    public static TheoryData<string> Exporters() => new(["llama", "gpt2", "gemma2"]);

    /// <summary>A model of each exporter's family: its architecture and its graph for given options.</summary>
    private sealed record Model(ModelArchitecture Architecture, Func<HookedGraphOptions, ModelProto> Export);

    private Model For(string exporter)
    {
        switch (exporter)
        {
            case "llama":
                var checkpoint = Llama2cCheckpoint.Read(Path.Combine(RepoPaths.Stories260kModel, "stories260K.bin"));
                return new Model(checkpoint.Architecture,
                    o => LlamaGraphExporter.Export(checkpoint.Architecture, checkpoint.Weights, o, "stories260k"));
            case "gpt2":
                var arch = new ModelArchitecture
                {
                    Family = "gpt2", DModel = 32, HiddenDim = 128, Layers = 3, Heads = 4, KvHeads = 4,
                    VocabSize = 96, ContextLength = 64, Norm = NormKind.LayerNorm, NormEpsilon = 1e-5f,
                    Mlp = MlpKind.Gelu, Positions = PositionEmbedding.Learned,
                };
                var weights = HfTestCheckpoints.RandomGpt2(arch, seed: 11);
                return new Model(arch, o => Gpt2GraphExporter.Export(arch, weights, o, "random-gpt2"));
            case "gemma2":
                var dir = _temp.Sub("tiny-gemma2");
                TinyGemma2.Write(dir, TinyGemma2.Config());
                var gemma = TinyGemma2.Read(dir);
                return new Model(gemma.Config.Architecture,
                    o => Gemma2GraphExporter.Export(gemma.Config, gemma.Weights, o, "tiny-gemma2"));
            default:
                throw new ArgumentOutOfRangeException(nameof(exporter), exporter, "no such exporter");
        }
    }

    /// <summary>
    /// Heavy steering at every site, each row its own: three rows of different lengths prefilled into their slots,
    /// then <see cref="DecodeSteps"/> decode steps of all three at their own positions, fed the ONNX-operator graph's
    /// greedy tokens. Same logits within 1e-4 relative L2 and the same greedy token at every step, and the steering
    /// does move the logits (the unsteered run is the custom-operator graph with zero steering).
    /// </summary>
    [Theory]
    [MemberData(nameof(Exporters))]
    public void Custom_operator_batched_graph_equals_the_onnx_operator_one_for_heavy_steering_at_every_site(
        string exporter)
    {
        var model = For(exporter);
        var arch = model.Architecture;
        var options = new HookedGraphOptions { KvLayout = KvCacheLayout.SharedBuffer, SlotsPerSite = 8 };
        var onnxModel = model.Export(options);
        var customModel = model.Export(options with { HookOperators = HookOperators.CustomOperator });
        Assert.DoesNotContain(onnxModel.Graph.Node, n => n.Domain == SteeringHookOp.Domain);
        Assert.Equal(arch.Layers * Site.KindsPerLayer,
            customModel.Graph.Node.Count(n => n.Domain == SteeringHookOp.Domain && n.OpType == SteeringHookOp.OpType));
        Assert.Contains(customModel.OpsetImport, o => o.Domain == SteeringHookOp.Domain);
        Assert.Contains(customModel.MetadataProps,
            p => p.Key == "featureflow.hook_form" && p.Value == "custom_operator");

        int[][] prompts = [[1, 17, 42, 5, 60], [1, 50], [3, 9, 27, 61, 2, 44, 30, 13]];
        var shape = new SteeringShape(arch.Layers, arch.DModel, options.SlotsPerSite);
        var steering = prompts.Select((_, r) => HeavySteering.Random(shape, new Random(40 + r))).ToArray();
        var engine = new EngineOptions
        {
            ExecutionProvider = ExecutionProviderPreference.Cpu, MaxBatchRows = prompts.Length,
        };
        using var onnxHooks = new ModelRunner(Write(onnxModel, "onnx-hooks"), null, arch, engine);
        using var customHooks = new ModelRunner(Write(customModel, "custom-hooks"), null, arch, engine);
        using var unsteered = new ModelRunner(Write(customModel, "unsteered"), null, arch, engine);
        for (var r = 0; r < prompts.Length; r++)
        {
            onnxHooks.Steering.Write(r, steering[r]);
            customHooks.Steering.Write(r, steering[r]);
        }

        var effect = double.MaxValue;
        // Compares the rows' logits [rows × vocab] and returns the reference's greedy tokens.
        int[] Compare(float[] reference, float[] custom, float[] zero, string what)
        {
            var vocab = arch.VocabSize;
            var next = new int[reference.Length / vocab];
            for (var r = 0; r < next.Length; r++)
            {
                var expected = reference.AsSpan(r * vocab, vocab);
                var actual = custom.AsSpan(r * vocab, vocab);
                var rel = Numerics.RelativeL2(actual, expected);
                Assert.True(rel <= Tolerance, $"{exporter}, {what}, row {r}: relative L2 {rel:E2}");
                next[r] = Numerics.ArgMax(expected);
                Assert.Equal(next[r], Numerics.ArgMax(actual));
                effect = Math.Min(effect, Numerics.RelativeL2(expected, zero.AsSpan(r * vocab, vocab)));
            }
            return next;
        }
        var tokens = new int[prompts.Length];
        for (var r = 0; r < prompts.Length; r++)
            tokens[r] = Compare(onnxHooks.Prefill(r, prompts[r], [], []).ToArray(),
                customHooks.Prefill(r, prompts[r], [], []).ToArray(),
                unsteered.Prefill(r, prompts[r], [], []).ToArray(), $"prefill of row {r}")[0];
        var noReadout = new int[shape.Sites];
        for (var step = 0; step < DecodeSteps; step++)
        {
            var runners = new[] { onnxHooks, customHooks, unsteered };
            var logits = runners.Select(runner =>
            {
                for (var r = 0; r < prompts.Length; r++) runner.SetNextToken(r, tokens[r]);
                return runner.Decode(prompts.Length, noReadout).ToArray();
            }).ToArray();
            tokens = Compare(logits[0], logits[1], logits[2], $"decode step {step}");
        }
        Assert.True(effect > 1e-2, $"{exporter}: steering moved some row's logits by only {effect:E2}");
    }

    private string Write(ModelProto model, string name)
    {
        var path = _temp.Sub(name + ".onnx");
        OnnxModelFile.Write(model, path);
        return path;
    }

    public void Dispose() => _temp.Dispose();
}
