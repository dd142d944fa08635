using FeatureFlow.Engine;
using FeatureFlow.Models.Export;
using FeatureFlow.Models.Hooking;
using FeatureFlow.Models.Llama2c;
using FeatureFlow.Onnx;
using FeatureFlow.Onnx.Ir;
using FeatureFlow.Steering;

namespace FeatureFlow.Models.Tests.Hooking;

/// <summary>
/// <see cref="InterfaceAdapter"/>: the folder's graphs run in our engine's own runner (<see cref="HookedDecoder"/>, which
/// feeds only our interface) and compute exactly what the third-party graph computes on its own I/O.
/// </summary>
[Collection(HookedFixturesCollection.Name)]
public sealed class InterfaceAdapterTests(HookedFixtures fixtures) : IDisposable
{
    private static readonly EngineOptions Cpu = new() { ExecutionProvider = ExecutionProviderPreference.Cpu };
    private static readonly LoadedCheckpoint Stories = Llama2cCheckpoint.Read(Path.Combine(RepoPaths.Stories260kModel, "stories260K.bin"));

    private readonly string _dir = Directory.CreateTempSubdirectory("featureflow-adapter-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    public static TheoryData<string, string> FolderGraphs()
    {
        var data = new TheoryData<string, string>();
        foreach (var family in new[] { "torch", "genai" })
            foreach (var graph in new[] { "hooked", "plain" }) data.Add(family, graph);
        return data;
    }

    /// <summary>Two rows over a 6-token prompt, then one token each (the torch export's causal mask allows T = 1 after a past).</summary>
    [Theory]
    [MemberData(nameof(FolderGraphs))]
    public void Folder_graphs_run_in_HookedDecoder_and_give_the_source_graphs_logits(string family, string graph)
    {
        var model = fixtures[family];
        using var decoder = new HookedDecoder(graph == "hooked" ? model.Folder.HookedGraphPath : model.Folder.PlainGraphPath,
            model.Architecture, Cpu);
        Assert.Equal(graph == "hooked", decoder.HasHooks);
        using var source = model.Source(batch: 2);
        using var state = decoder.NewState(batch: 2);
        using var identity = decoder.HasHooks ? decoder.Bind([new SteeringTensors(decoder.SteeringShape!), new SteeringTensors(decoder.SteeringShape!)]) : null;
        foreach (var tokens in new[] { new[] { 5, 17, 3, 9, 41, 2, 40, 2, 11, 8, 23, 1 }, [7, 11] })
        {
            var expected = source.Step(tokens);
            var actual = decoder.Forward(state, tokens, identity);
            Assert.Equal(expected.Length, actual.Length);
            var worst = expected.Zip(actual, (e, a) => Math.Abs(e - a)).Max();
            Assert.True(worst <= 1e-6, $"{family} {graph}: logits differ from the source graph's by up to {worst}");
        }
    }

    /// <summary>The steered hooked graph, adapted, equals the un-adapted hooked graph driven through its own I/O.</summary>
    [Theory]
    [InlineData("torch")]
    [InlineData("genai")]
    public void Steering_the_adapted_hooked_graph_equals_steering_the_unadapted_one(string family)
    {
        var model = fixtures[family];
        var steering = new SteeringTensors(model.SteeringShape);
        Numerics.RandomVector(new Random(3), model.Architecture.DModel, 0.7f).CopyTo(steering.AddAt(new Site(1, SiteKind.MlpOut)));
        using var decoder = new HookedDecoder(model.Folder.HookedGraphPath, model.Architecture, Cpu);
        using var unadapted = model.Unadapted();
        using var unsteered = model.Unadapted();
        using var state = decoder.NewState();
        using var bound = decoder.Bind(steering);
        foreach (var tokens in new[] { new[] { 5, 17, 3, 9 }, [23] })
        {
            var expected = unadapted.Step(tokens, [steering]);
            var actual = decoder.Forward(state, tokens, bound);
            Assert.True(expected.Zip(actual, (e, a) => Math.Abs(e - a)).Max() <= 1e-6, $"{family}: adapted and un-adapted differ");
            Assert.True(Numerics.RelativeL2(actual, unsteered.Step(tokens)) > 1e-3, $"{family}: steering changed nothing");
        }
    }

    /// <summary>Our fused-operator export is the model-builder Llama graph (see <see cref="ModelBuilderLlamaTests"/>).</summary>
    [Fact]
    public void Graphs_already_on_our_interface_come_out_unchanged()
    {
        foreach (var (graph, what) in new[] { (FusedExport(), "our fused export (model-builder Llama)"),
                     (OnnxModelFile.Read(fixtures.Torch.SourceGraph), "torch GPT-2") })
        {
            var hooked = GraphHooker.Hook(graph, new HookOptions { SlotsPerSite = 2 });
            foreach (var (input, kind) in new[] { (graph, "plain"), (hooked.Model, "hooked") })
            {
                var adapted = InterfaceAdapter.Adapt(input, hooked.Io, hooked.Decoder.Architecture);
                Assert.True(adapted.Changes.Count == 0, $"{what}, {kind}: {string.Join("; ", adapted.Changes)}");
                Assert.True(adapted.Model.Equals(input), $"{what}, {kind}: the adapted graph differs from its input");
            }
        }
    }

    public static TheoryData<bool, bool> Variants() => new() { { true, false }, { false, true }, { true, true } };

    /// <summary>
    /// A model-builder Llama (our fused export of llama2.c stories260K) in float16 and/or with its KV cache under other names
    /// (past.L.k/v → present.L.k/v): adapted, hooked and plain, it runs in HookedDecoder and gives the logits of the
    /// graph it came from, and llama2.c's to that graph's precision.
    /// </summary>
    [Theory]
    [MemberData(nameof(Variants))]
    public void A_float16_or_renamed_kv_cache_is_cast_and_renamed_at_the_boundary(bool float16, bool renamed)
    {
        var source = FusedExport();
        if (renamed) RenameKv(source, Stories.Architecture.Layers);
        if (float16) source = Float16Conversion.Convert(source);
        var hooked = GraphHooker.Hook(source, new HookOptions { SlotsPerSite = 2 });
        var arch = hooked.Decoder.Architecture;
        var changes = new List<string>();
        foreach (var (graph, name) in new[] { (source, "source"), (hooked.Model, "hooked") })
        {
            var adapted = InterfaceAdapter.Adapt(graph, hooked.Io, arch);
            OnnxModelFile.Write(graph, Path.Combine(_dir, $"{name}.onnx"));
            OnnxModelFile.Write(adapted.Model, Path.Combine(_dir, $"{name}-adapted.onnx"));
            changes = [.. adapted.Changes];
        }
        Assert.Equal(renamed, changes.Contains("past.%d.k, past.%d.v → past_key_values.%d.key, .value and present.%d.k, "
            + "present.%d.v → present.%d.key, .value (renamed)"));
        Assert.Equal(float16, changes.Contains("KV cache: float32 past inputs Cast to the graph's float16, float16 presents Cast to float32"));
        Assert.Equal(float16, changes.Contains("logits: float16 output Cast to float32"));

        var steering = new SteeringTensors(new SteeringShape(arch.Layers, arch.DModel, 2));
        Numerics.RandomVector(new Random(11), arch.DModel, 0.5f).CopyTo(steering.AddAt(new Site(2, SiteKind.AttnOut)));
        foreach (var name in new[] { "source", "hooked" })
        {
            using var decoder = new HookedDecoder(Path.Combine(_dir, $"{name}-adapted.onnx"), arch, Cpu);
            using var original = new DecoderGraphRunner(Path.Combine(_dir, $"{name}.onnx"), hooked.Io, arch.Layers, 1, arch.DModel);
            using var state = decoder.NewState();
            using var bound = decoder.HasHooks ? decoder.Bind(steering) : null;
            var rows = decoder.HasHooks ? new[] { steering } : null;
            var referenceRun = new ReferenceTransformer(Stories);
            foreach (var (tokens, start) in new[] { (new[] { 1, 403, 407, 261 }, 0), ([378], 4) })
            {
                var expected = original.Step(tokens, rows);
                var actual = decoder.Forward(state, tokens, bound);
                // float16: the adapted graph's logits come back without the original's last rounding to float16 (ONNX
                // Runtime's CPU kernels compute in float32, and a Cast to float16 right before our Cast back to float32
                // is optimised away), so they differ by up to half a float16 step.
                var worst = expected.Zip(actual, (e, a) => Math.Abs(e - a)).Max();
                Assert.True(worst <= (float16 ? 2e-3 : 1e-6) * expected.Max(Math.Abs), $"{name}: adapted logits differ by up to {worst}");
                for (var t = 0; t < tokens.Length; t++)
                {
                    var error = Numerics.RelativeL2(actual.AsSpan(t * arch.VocabSize, arch.VocabSize),
                        referenceRun.Forward(tokens[t], start + t, rows?[0]));
                    Assert.True(error < (float16 ? 2e-2 : 1e-4), $"{name} position {start + t}: relative L2 {error} off llama2c");
                }
            }
        }
    }

    /// <summary>
    /// A fused GPT-2 without a position_ids input (its EmbedLayerNormalization then counts positions from 0) gets one
    /// no node reads, so HookedDecoder can feed it; on a prompt it gives the logits of the graph with position_ids.
    /// </summary>
    [Fact]
    public void A_graph_without_position_ids_gets_an_unread_input_that_onnx_runtime_accepts()
    {
        var model = OnnxModelFile.Read(fixtures.GenAi.SourceGraph);
        var cast = model.Graph.Node.Single(n => n.Input.Contains("position_ids"));
        var embed = model.Graph.Node.Single(n => n.Input.Contains(cast.Output[0]));
        Assert.Equal(("Cast", "EmbedLayerNormalization", 8), (cast.OpType, embed.OpType, embed.Input.IndexOf(cast.Output[0])));
        embed.Input[8] = "";
        model.Graph.Node.Remove(cast);
        model.Graph.Input.Remove(model.Graph.Input.Single(i => i.Name == "position_ids"));
        var io = DecoderIoDetector.Detect(model.Graph);
        Assert.Null(io.PositionIds);
        var adapted = InterfaceAdapter.Adapt(model, io, fixtures.GenAi.Architecture);
        Assert.Contains("position_ids: added as an int64 input no node reads (the graph has none)", adapted.Changes);
        var path = Path.Combine(_dir, "no-positions.onnx");
        OnnxModelFile.Write(adapted.Model, path);

        using var decoder = new HookedDecoder(path, fixtures.GenAi.Architecture, Cpu);
        using var state = decoder.NewState();
        using var source = fixtures.GenAi.Source();
        int[] prompt = [0, 0, 195, 731, 12];
        var expected = source.Step(prompt);
        var actual = decoder.Forward(state, prompt, null);
        Assert.True(expected.Zip(actual, (e, a) => Math.Abs(e - a)).Max() <= 1e-6);
    }

    [Fact]
    public void A_graph_with_an_input_our_engine_does_not_feed_is_refused_naming_it()
    {
        var model = OnnxModelFile.Read(fixtures.Torch.SourceGraph);
        var extra = model.Graph.Input.Single(i => i.Name == "attention_mask").Clone();
        extra.Name = "token_type_ids";
        model.Graph.Input.Add(extra);
        var e = Assert.Throws<InvalidDataException>(() =>
            InterfaceAdapter.Adapt(model, DecoderIoDetector.Detect(model.Graph), fixtures.Torch.Architecture));
        Assert.Contains("expected only input_ids, position_ids, attention_mask and the KV cache", e.Message);
        Assert.Contains("'token_type_ids' (int64)", e.Message);
    }

    private static ModelProto FusedExport() => LlamaGraphExporter.Export(Stories.Architecture, Stories.Weights,
        new HookedGraphOptions { Hooks = false, SiteOutputs = false, Operators = OperatorSet.Fused }, "stories260k-fused");

    /// <summary>past_key_values.L.key → past.L.k (and value, present alike), in declarations and readers.</summary>
    private static void RenameKv(ModelProto model, int layers)
    {
        var names = new Dictionary<string, string>(StringComparer.Ordinal);
        for (var l = 0; l < layers; l++)
        {
            names[GraphNames.PastKey(l)] = $"past.{l}.k";
            names[GraphNames.PastValue(l)] = $"past.{l}.v";
            names[GraphNames.PresentKey(l)] = $"present.{l}.k";
            names[GraphNames.PresentValue(l)] = $"present.{l}.v";
        }
        foreach (var value in model.Graph.Input.Concat(model.Graph.Output))
            if (names.TryGetValue(value.Name, out var renamed)) value.Name = renamed;
        foreach (var node in model.Graph.Node)
        {
            for (var i = 0; i < node.Input.Count; i++)
                if (names.TryGetValue(node.Input[i], out var renamed)) node.Input[i] = renamed;
            for (var i = 0; i < node.Output.Count; i++)
                if (names.TryGetValue(node.Output[i], out var renamed)) node.Output[i] = renamed;
        }
    }
}
