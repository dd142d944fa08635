using FeatureFlow.Models.Folder;
using FeatureFlow.Models.Hooking;
using FeatureFlow.Models.Llama2c;
using FeatureFlow.Onnx;
using FeatureFlow.Steering;

namespace FeatureFlow.Models.Tests.Hooking;

/// <summary>
/// The fourth family, plain-operator Llama graphs, on the shipped stories260K <c>decoder.onnx</c> (our exporter's plain
/// path, no hooks): the shipped manifest is the oracle for what is recognised, the unhooked graph for zero steering,
/// and our exporter's own hooked graph <c>decoder_hooked.onnx</c> (hooks written at export) for every steered site kind.
/// </summary>
public sealed class PlainLlamaTests : IDisposable
{
    private static readonly string PlainPath = Path.Combine(RepoPaths.Stories260kModel, "decoder.onnx");
    private static readonly string ExportedHookedPath = Path.Combine(RepoPaths.Stories260kModel, "decoder_hooked.onnx");
    private static readonly LoadedCheckpoint Checkpoint =
        Llama2cCheckpoint.Read(Path.Combine(RepoPaths.Stories260kModel, "stories260K.bin"));
    private static readonly int[] Prompt = [1, 403, 407, 261];
    private const int Next = 378;
    /// <summary>The shipped hooked graph's slots, so one set of steering tensors drives both hooked graphs.</summary>
    private const int Slots = 8;

    private readonly string _dir = Directory.CreateTempSubdirectory("featureflow-hook-plain-llama-").FullName;
    private readonly string _hookedPath;
    private readonly HookedGraph _hooked;

    public PlainLlamaTests()
    {
        // The context length comes from the folder's genai_config.json, as featureflow hook reads it.
        _hooked = GraphHooker.Hook(OnnxModelFile.Read(PlainPath), new HookOptions { SlotsPerSite = Slots },
            SourceModelConfig.Read(RepoPaths.Stories260kModel).Hints);
        _hookedPath = Path.Combine(_dir, "decoder_hooked.onnx");
        OnnxModelFile.Write(_hooked.Model, _hookedPath);
    }

    public void Dispose() => Directory.Delete(_dir, true);

    [Fact]
    public void Decoder_onnx_is_recognised_as_plain_llama_with_the_shipped_manifests_architecture()
    {
        var path = Path.Combine(RepoPaths.Stories260kModel, ModelManifest.FileName);
        var shipped = ModelManifest.Parse(File.ReadAllText(path), path).Architecture;
        var a = _hooked.Decoder.Architecture;
        Assert.Equal("plain-llama", _hooked.Decoder.Family);
        Assert.Equal((shipped.DModel, shipped.HiddenDim, shipped.Layers, shipped.Heads, shipped.KvHeads,
                shipped.VocabSize, shipped.ContextLength, shipped.HeadSize),
            (a.DModel, a.HiddenDim, a.Layers, a.Heads, a.KvHeads, a.VocabSize, a.ContextLength, a.HeadSize));
        Assert.Equal((shipped.Norm, shipped.Mlp, shipped.Positions, shipped.Rotary, shipped.TiedEmbeddings),
            (a.Norm, a.Mlp, a.Positions, a.Rotary, a.TiedEmbeddings));
        Assert.Equal(shipped.RotaryTheta, a.RotaryTheta, shipped.RotaryTheta * 1e-4f);
        Assert.Equal(shipped.NormEpsilon, a.NormEpsilon, 1e-9f);
        Assert.Empty(_hooked.Decoder.Rewrites);
        Assert.Equal(Site.All(shipped.Layers).Select(s => s.HookName), _hooked.Decoder.Sites.Select(s => s.Site.HookName));
    }

    [Fact]
    public void Without_a_context_length_from_the_config_the_graph_is_refused_saying_so()
    {
        var error = Assert.Throws<InvalidDataException>(() =>
            GraphHooker.Hook(OnnxModelFile.Read(PlainPath), new HookOptions())).Message;
        Assert.Contains("context length", error);
        Assert.Contains("genai_config.json or config.json", error);
    }

    [Fact]
    public void Zero_steering_gives_decoder_onnxs_logits()
    {
        using var plain = Runner(PlainPath);
        using var hooked = Runner(_hookedPath);
        foreach (var tokens in new[] { Prompt, [Next] })
        {
            var (expected, actual) = (plain.Step(tokens), hooked.Step(tokens));
            var worst = expected.Zip(actual, (e, x) => Math.Abs(e - x)).Max();
            Assert.True(worst <= 1e-6, $"hooked and plain logits differ by up to {worst}");
        }
    }

    public static TheoryData<SiteKind, bool> Interventions() => LlamaInterventions.EveryKind();

    [Theory]
    [MemberData(nameof(Interventions))]
    public void Steered_logits_equal_our_exporters_hooked_graph_with_the_same_tensors(SiteKind kind, bool slotTerm)
    {
        var site = new Site(1 + (int)kind, kind);
        var shape = new SteeringShape(Checkpoint.Architecture.Layers, Checkpoint.Architecture.DModel, Slots);
        var steering = LlamaInterventions.At(shape, site, slotTerm, seed: 17);
        using var hooked = Runner(_hookedPath);
        using var unsteered = Runner(_hookedPath);
        using var ours = new Engine.HookedDecoder(ExportedHookedPath, Checkpoint.Architecture,
            new Engine.EngineOptions { ExecutionProvider = Engine.ExecutionProviderPreference.Cpu });
        using var oursState = ours.NewState();
        using var oursSteering = ours.Bind(steering);
        foreach (var tokens in new[] { Prompt, [Next] })
        {
            var logits = hooked.Step(tokens, [steering]);
            Assert.True(Numerics.RelativeL2(logits, unsteered.Step(tokens)) > 1e-3, $"{site}: steering changed nothing");
            var error = Numerics.RelativeL2(logits, ours.Forward(oursState, tokens, oursSteering));
            Assert.True(error <= 1e-4, $"{site}: hooked decoder.onnx vs our exporter's hooked graph: relative L2 {error}");
        }
    }

    [Fact]
    public void A_block_without_softmax_is_refused_naming_the_block()
    {
        var model = OnnxModelFile.Read(PlainPath);
        var softmax = model.Graph.Node.Single(n => n.OpType == "Softmax" && InBlock(n, 3));
        softmax.OpType = "Identity";
        softmax.Attribute.Clear();
        var error = Refusal(model);
        Assert.Contains("blocks.3: expected attention (Softmax)", error);
    }

    [Fact]
    public void A_block_with_a_broken_norm_is_refused_naming_the_block()
    {
        var model = OnnxModelFile.Read(PlainPath);
        // Block 2's second RMSNorm (before the MLP) takes the maximum instead of the mean square: no RMSNorm any more.
        model.Graph.Node.Last(n => n.OpType == "ReduceMean" && InBlock(n, 2)).OpType = "ReduceMax";
        var error = Refusal(model);
        Assert.Contains("blocks.2: expected a norm reading the residual after attention", error);
    }

    [Fact]
    public void A_rotary_pairing_that_is_neither_interleaved_nor_rotate_half_is_refused()
    {
        var model = OnnxModelFile.Read(PlainPath);
        foreach (var split in model.Graph.Node.Where(n => n.OpType == "Split" && InBlock(n, 0)))
            split.OpType = "SplitToSequence";
        Assert.Contains("blocks.0: expected rotary embedding either as rotate_half", Refusal(model));
    }

    [Fact]
    public void Without_inv_freq_rope_theta_comes_from_the_config_or_the_graph_is_refused()
    {
        var model = OnnxModelFile.Read(PlainPath);
        var inverse = model.Graph.Initializer.Single(t => t.Name == "rotary.inv_freq");
        foreach (var node in model.Graph.Node)
            for (var i = 0; i < node.Input.Count; i++)
                if (node.Input[i] == inverse.Name) node.Input[i] = "rotary.frequencies";
        inverse.Name = "rotary.frequencies";
        Assert.Contains("rope_theta in config.json", Refusal(model));
        var hooked = GraphHooker.Hook(model, new HookOptions(), new SourceHints(ContextLength: 512, RopeTheta: 500000f));
        Assert.Equal(500000f, hooked.Decoder.Architecture.RotaryTheta);
    }

    /// <summary>Whether our exporter wrote <paramref name="node"/> in block <paramref name="layer"/>'s scope.</summary>
    private static bool InBlock(Onnx.Ir.NodeProto node, int layer) =>
        node.Name.StartsWith($"blocks.{layer}/", StringComparison.Ordinal);

    private static string Refusal(Onnx.Ir.ModelProto model) =>
        Assert.Throws<InvalidDataException>(() =>
            GraphHooker.Hook(model, new HookOptions(), new SourceHints(ContextLength: 512))).Message;

    private DecoderGraphRunner Runner(string path) =>
        new(path, _hooked.Io, Checkpoint.Architecture.Layers, 1, Checkpoint.Architecture.DModel);
}
