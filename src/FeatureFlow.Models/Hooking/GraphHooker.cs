using System.Globalization;
using FeatureFlow.Models.Export;
using FeatureFlow.Onnx;
using FeatureFlow.Onnx.Ir;
using DataType = FeatureFlow.Onnx.Ir.TensorProto.Types.DataType;

namespace FeatureFlow.Models.Hooking;

/// <summary>What <c>featureflow hook</c> puts into the graph (the same knobs as our exporter's).</summary>
public sealed record HookOptions
{
    /// <summary>Feature slots per site: how many rescale/clamp terms one request can place at one site.</summary>
    public int SlotsPerSite { get; init; } = new HookedGraphOptions().SlotsPerSite;

    /// <summary>Expose each site's steered value as a graph output named after the site, for read-out.</summary>
    public bool SiteOutputs { get; init; } = true;
}

/// <summary>A third-party graph with the steering interface inserted, and what was recognised on the way.</summary>
public sealed record HookedGraph(ModelProto Model, RecognizedDecoder Decoder, DecoderIo Io, long? OpsetRaisedFrom);

/// <summary>
/// Inserts our steering interface into a decoder graph another tool wrote: the four stacked steering inputs split once,
/// the hook at every block's attn_out, mlp_out and resid_post site (found from the graph's structure by the first
/// <see cref="IDecoderFamily"/> that claims it), and optionally each site's value as an output named after the site.
/// A float16 graph keeps float32 steering: each hook casts the site value up, steers it in float32 and casts it back.
/// </summary>
public static class GraphHooker
{
    /// <summary>
    /// Fused families first: a fused graph also contains the plain operators a plain family looks for. The plain
    /// Llama family claims no graph with a LayerNormalization, so it cannot take a torch GPT-2 either way; it goes last.
    /// </summary>
    public static IReadOnlyList<IDecoderFamily> Families { get; } =
        [new OrtFusedGpt2Family(), new ModelBuilderLlamaFamily(), new TorchGpt2Family(), new PlainLlamaFamily()];

    public const string FloatCastNote =
        "steering inputs stay float32; each hook Casts the float16 site value to float32, applies the hook in float32 "
        + "and Casts the result back to float16 (site outputs are float32)";

    /// <param name="hints">What the source folder's configs say (<see cref="SourceModelConfig.Hints"/>); families
    /// whose graphs carry everything ignore them.</param>
    public static HookedGraph Hook(ModelProto source, HookOptions options, SourceHints? hints = null)
    {
        if (options.SlotsPerSite < 1) throw new ArgumentException($"slots per site must be at least 1; got "
            + $"{options.SlotsPerSite}");
        var model = source.Clone();
        var graph = new GraphEditor(model.Graph);
        if (model.Graph.Input.Any(i => i.Name.StartsWith("steering.", StringComparison.Ordinal)))
            throw new InvalidDataException("the graph already has steering inputs; hook the plain graph instead");
        var family = Families.FirstOrDefault(f => f.Claims(graph)) ?? throw NoFamily(model.Graph);
        var io = DecoderIoDetector.Detect(model.Graph);
        var raisedFrom = OpsetRequirement.Ensure(model);
        var prefix = graph.UniquePrefix("featureflow");
        var decoder = family.Recognize(graph, io, prefix, hints ?? SourceHints.None);
        CheckKvLayers(model.Graph, io, decoder.Architecture.Layers);
        InsertHooks(graph, decoder, prefix, options, OpsetRequirement.Of(model));
        graph.SortTopologically();
        model.MetadataProps.Add(new StringStringEntryProto { Key = "featureflow.hooks", Value = "true" });
        model.MetadataProps.Add(new StringStringEntryProto
        {
            Key = "featureflow.slots_per_site", Value = options.SlotsPerSite.ToString(CultureInfo.InvariantCulture),
        });
        model.MetadataProps.Add(new StringStringEntryProto { Key = "featureflow.hooked_family", Value = family.Name });
        return new HookedGraph(model, decoder, io, raisedFrom);
    }

    private static void InsertHooks(GraphEditor graph, RecognizedDecoder decoder, string prefix, HookOptions options, long opset)
    {
        var arch = decoder.Architecture;
        var g = new GraphBuilder(graph.Graph.Name);
        var redirects = new List<(string Value, string Steered, NodeProto[] Readers)>();
        using (g.Scope(prefix))
        {
            var steering = SteeringHook.DeclareInputs(g, arch.Layers * Site.KindsPerLayer, arch.DModel, options.SlotsPerSite, opset);
            foreach (var tap in decoder.Sites)
            {
                // Readers are taken before any hook exists, so a hook never reads its own output.
                var readers = graph.Consumers(tap.Value).ToArray();
                using var _ = g.Scope($"blocks.{tap.Site.Layer}");
                var steered = decoder.FloatType == DataType.Float
                    ? SteeringHook.Apply(g, steering, tap.Site, tap.Value, options.SiteOutputs, arch.DModel)
                    : Cast(g, SteeringHook.Apply(g, steering, tap.Site, Cast(g, tap.Value, DataType.Float), options.SiteOutputs, arch.DModel),
                        decoder.FloatType);
                redirects.Add((tap.Value, steered, readers));
            }
        }
        foreach (var (value, steered, readers) in redirects) graph.Redirect(value, steered, readers);
        graph.Merge(g.Build(new OnnxModelOptions()).Graph);
    }

    private static string Cast(GraphBuilder g, string value, DataType to) => g.Op("Cast", [value], Attr.Int("to", (long)to));

    private static void CheckKvLayers(GraphProto graph, DecoderIo io, int layers)
    {
        var inputs = graph.Input.Select(i => i.Name).ToHashSet(StringComparer.Ordinal);
        if (!inputs.Contains(io.Kv.PastName(layers - 1, false)) || inputs.Contains(io.Kv.PastName(layers, false)))
            throw new InvalidDataException($"the residual stream has {layers} blocks but the graph's past inputs "
                + $"({io.Kv.PastName(0, false)}, …) are not numbered 0 … {layers - 1}");
    }

    private static InvalidDataException NoFamily(GraphProto graph)
    {
        var ops = graph.Node.GroupBy(n => n.Domain is "" or "ai.onnx" ? n.OpType : $"{n.Domain}.{n.OpType}")
            .OrderByDescending(g => g.Count()).Take(12).Select(g => $"{g.Key} ×{g.Count()}");
        return new InvalidDataException("unrecognised decoder graph: expected one of "
            + string.Join("; ", Families.Select(f => $"{f.Name} ({f.Expects})"))
            + $"; found {string.Join(", ", ops)}");
    }
}
