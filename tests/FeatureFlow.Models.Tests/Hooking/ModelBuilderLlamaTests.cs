using FeatureFlow.Models.Hooking;
using FeatureFlow.Models.Llama2c;
using FeatureFlow.Onnx;
using FeatureFlow.Steering;

namespace FeatureFlow.Models.Tests.Hooking;

/// <summary>
/// The third family, onnxruntime-genai model-builder Llama graphs, on our exporter's fused-operator variant of llama2.c
/// stories260K (SimplifiedLayerNormalization, SkipSimplifiedLayerNormalization, RotaryEmbedding, MultiHeadAttention),
/// so llama2.c's own forward pass (<see cref="ReferenceTransformer"/>) and our own hooked export are the oracles: this is
/// the reference for site detection.
/// </summary>
public sealed class ModelBuilderLlamaTests : IDisposable
{
    private static readonly LoadedCheckpoint Checkpoint = Llama2cCheckpoint.Read(Path.Combine(RepoPaths.Stories260kModel, "stories260K.bin"));
    private static readonly int[] Prompt = [1, 403, 407, 261];
    private const int Next = 378;
    /// <summary>The shipped hooked graph's slots, so one set of steering tensors drives both hooked graphs.</summary>
    private const int Slots = 8;

    private readonly string _dir = Directory.CreateTempSubdirectory("featureflow-hook-llama-").FullName;
    private readonly string _plainPath;
    private readonly string _hookedPath;
    private readonly HookedGraph _hooked;

    public ModelBuilderLlamaTests()
    {
        var plain = FusedExport();
        _plainPath = Path.Combine(_dir, "model.onnx");
        OnnxModelFile.Write(plain, _plainPath);
        _hooked = GraphHooker.Hook(plain, new HookOptions { SlotsPerSite = Slots });
        _hookedPath = Path.Combine(_dir, "decoder_hooked.onnx");
        OnnxModelFile.Write(_hooked.Model, _hookedPath);
    }

    public void Dispose() => Directory.Delete(_dir, true);

    /// <summary>Our exporter's fused-operator variant without hooks: what onnxruntime-genai's model builder writes.</summary>
    private static Onnx.Ir.ModelProto FusedExport() => Export.LlamaGraphExporter.Export(Checkpoint.Architecture,
        Checkpoint.Weights, new Export.HookedGraphOptions
        {
            Hooks = false, SiteOutputs = false, Operators = Export.OperatorSet.Fused,
        }, "stories260k-fused");

    [Fact]
    public void The_graph_is_recognised_as_model_builder_llama_with_the_checkpoints_shape()
    {
        var a = _hooked.Decoder.Architecture;
        var c = Checkpoint.Architecture;
        Assert.Equal("onnxruntime-genai-llama", _hooked.Decoder.Family);
        Assert.Equal((c.DModel, c.HiddenDim, c.Layers, c.Heads, c.KvHeads, c.VocabSize, c.ContextLength),
            (a.DModel, a.HiddenDim, a.Layers, a.Heads, a.KvHeads, a.VocabSize, a.ContextLength));
        Assert.Equal((NormKind.RmsNorm, MlpKind.SwiGlu, PositionEmbedding.Rotary, RotaryConvention.Interleaved), (a.Norm, a.Mlp, a.Positions, a.Rotary));
        Assert.Equal(2 * c.Layers, _hooked.Decoder.Rewrites.Count);
        Assert.All(_hooked.Decoder.Rewrites, r => Assert.Contains("SkipSimplifiedLayerNormalization", r));
        Assert.Equal(KvCacheIo.SeparatePacking, _hooked.Io.Kv.Packing);
        Assert.Equal(15, _hooked.Decoder.Sites.Count);
    }

    [Fact]
    public void Zero_steering_equals_the_unhooked_graph_to_float_rounding_and_llama2c()
    {
        using var plain = Runner(_plainPath);
        using var hooked = Runner(_hookedPath);
        var reference = new ReferenceTransformer(Checkpoint);
        foreach (var (tokens, start) in new[] { (Prompt, 0), ([Next], Prompt.Length) })
        {
            var expected = plain.Step(tokens);
            var actual = hooked.Step(tokens);
            // The split norms run ONNX Runtime's plain kernels instead of the fused one: the same sums in another order,
            // so the logits (up to ~19 here) agree to float32 rounding rather than bit for bit.
            var worst = expected.Zip(actual, (e, a) => Math.Abs(e - a)).Max();
            Assert.True(worst <= 1e-6 * expected.Max(Math.Abs), $"hooked and plain logits differ by up to {worst}");
            AssertMatchesReference(actual, tokens, start, reference, null);
        }
    }

    public static TheoryData<SiteKind, bool> Interventions() => LlamaInterventions.EveryKind();

    [Theory]
    [MemberData(nameof(Interventions))]
    public void Steered_logits_equal_llama2c_with_the_same_intervention(SiteKind kind, bool slotTerm)
    {
        var site = new Site(2, kind);
        var shape = new SteeringShape(Checkpoint.Architecture.Layers, Checkpoint.Architecture.DModel, Slots);
        var steering = LlamaInterventions.At(shape, site, slotTerm, seed: 99);
        using var hooked = Runner(_hookedPath);
        using var unsteered = Runner(_hookedPath);
        // Our own hooked export (plain operators, hooks written by the exporter) with the same tensors.
        using var ours = new Engine.HookedDecoder(Path.Combine(RepoPaths.Stories260kModel, "decoder_hooked.onnx"),
            Checkpoint.Architecture, new Engine.EngineOptions { ExecutionProvider = Engine.ExecutionProviderPreference.Cpu });
        using var oursState = ours.NewState();
        using var oursSteering = ours.Bind(steering);
        var reference = new ReferenceTransformer(Checkpoint);
        foreach (var (tokens, start) in new[] { (Prompt, 0), ([Next], Prompt.Length) })
        {
            var logits = hooked.Step(tokens, [steering]);
            Assert.True(Numerics.RelativeL2(logits, unsteered.Step(tokens)) > 1e-3, $"{site}: steering changed nothing");
            AssertMatchesReference(logits, tokens, start, reference, steering);
            var exported = ours.Forward(oursState, tokens, oursSteering);
            var error = Numerics.RelativeL2(logits, exported);
            Assert.True(error < 1e-4, $"{site}: hooked fused export vs our hooked export: relative L2 {error}");
        }
    }

    [Fact]
    public void A_float16_graph_keeps_float32_steering_and_matches_llama2c_to_half_precision()
    {
        var half = Float16Conversion.Convert(FusedExport());
        var hooked = GraphHooker.Hook(half, new HookOptions { SlotsPerSite = 2 });
        Assert.Equal(Onnx.Ir.TensorProto.Types.DataType.Float16, hooked.Decoder.FloatType);
        Assert.All(hooked.Model.Graph.Input.Where(i => i.Name.StartsWith("steering.", StringComparison.Ordinal)),
            i => Assert.Equal((int)Onnx.Ir.TensorProto.Types.DataType.Float, i.Type.TensorType.ElemType));
        var halfPath = Path.Combine(_dir, "half.onnx");
        var hookedPath = Path.Combine(_dir, "half_hooked.onnx");
        OnnxModelFile.Write(half, halfPath);
        OnnxModelFile.Write(hooked.Model, hookedPath);
        var site = new Site(3, SiteKind.MlpOut);
        var steering = new SteeringTensors(new SteeringShape(Checkpoint.Architecture.Layers, Checkpoint.Architecture.DModel, 2));
        Numerics.RandomVector(new Random(5), Checkpoint.Architecture.DModel, 1f).CopyTo(steering.AddAt(site));
        using var plain = new DecoderGraphRunner(halfPath, hooked.Io, Checkpoint.Architecture.Layers, 1, Checkpoint.Architecture.DModel);
        using var zero = new DecoderGraphRunner(hookedPath, hooked.Io, Checkpoint.Architecture.Layers, 1, Checkpoint.Architecture.DModel);
        using var steered = new DecoderGraphRunner(hookedPath, hooked.Io, Checkpoint.Architecture.Layers, 1, Checkpoint.Architecture.DModel);
        var reference = new ReferenceTransformer(Checkpoint);
        var steeredReference = new ReferenceTransformer(Checkpoint);
        var vocab = Checkpoint.Architecture.VocabSize;
        foreach (var (tokens, start) in new[] { (Prompt, 0), ([Next], Prompt.Length) })
        {
            var (plainLogits, zeroLogits, steeredLogits) = (plain.Step(tokens), zero.Step(tokens), steered.Step(tokens, [steering]));
            for (var t = 0; t < tokens.Length; t++)
            {
                var at = new Range(t * vocab, (t + 1) * vocab);
                var expected = reference.Forward(tokens[t], start + t);
                Assert.True(Numerics.RelativeL2(plainLogits[at], expected) < 2e-2, "the float16 conversion itself is off");
                Assert.True(Numerics.RelativeL2(zeroLogits[at], plainLogits[at]) < 5e-3, $"position {start + t}: zero steering moved the logits");
                var error = Numerics.RelativeL2(steeredLogits[at], steeredReference.Forward(tokens[t], start + t, steering));
                Assert.True(error < 2e-2, $"position {start + t}: steered float16 logits off llama2c by relative L2 {error}");
                Assert.True(Numerics.RelativeL2(steeredLogits[at], zeroLogits[at]) > 0.1, "steering changed nothing");
            }
        }
    }

    private DecoderGraphRunner Runner(string path) =>
        new(path, _hooked.Io, Checkpoint.Architecture.Layers, 1, Checkpoint.Architecture.DModel);

    private static void AssertMatchesReference(float[] logits, int[] tokens, int start, ReferenceTransformer reference, SteeringTensors? steering)
    {
        var vocab = Checkpoint.Architecture.VocabSize;
        for (var t = 0; t < tokens.Length; t++)
        {
            var expected = reference.Forward(tokens[t], start + t, steering);
            var error = Numerics.RelativeL2(logits.AsSpan(t * vocab, vocab), expected);
            Assert.True(error <= 1e-4, $"position {start + t}: relative L2 {error}");
        }
    }
}
