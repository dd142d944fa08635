using FeatureFlow.Onnx;
using FeatureFlow.Onnx.Ir;

namespace FeatureFlow.Models.Hooking;

/// <summary>
/// Llama-style decoders as onnxruntime-genai's model builder writes them: token Gather, SimplifiedLayerNormalization
/// (RMSNorm) for block 0, per block com.microsoft GroupQueryAttention or MultiHeadAttention (rotary embedding inside,
/// or as com.microsoft RotaryEmbedding nodes), MatMul projection, SkipSimplifiedLayerNormalization (residual + next
/// RMSNorm, the sum as optional output 3), a gated MLP, and a last SkipSimplifiedLayerNormalization as the final norm.
/// Every SkipSimplifiedLayerNormalization is split into Add (residual) + SimplifiedLayerNormalization.
/// </summary>
public sealed class ModelBuilderLlamaFamily : ResidualStreamFamily
{
    private const string Microsoft = "com.microsoft";

    public override string Name => "onnxruntime-genai-llama";

    public override string Expects => "onnxruntime-genai model-builder Llama: SimplifiedLayerNormalization, "
        + "com.microsoft SkipSimplifiedLayerNormalization and GroupQueryAttention or MultiHeadAttention";

    protected override string AttentionMark => "com.microsoft GroupQueryAttention or MultiHeadAttention";

    public override bool Claims(GraphEditor graph) =>
        graph.Graph.Node.Any(n => SkipNormSplitter.SimplifiedLayerNorm.Matches(n)) && graph.Graph.Node.Any(IsAttention);

    protected override bool IsAttention(NodeProto node) =>
        node is { OpType: "GroupQueryAttention" or "MultiHeadAttention", Domain: Microsoft };

    private static bool IsNorm(NodeProto node) => node is { OpType: "SimplifiedLayerNormalization", Domain: "" or "ai.onnx" or Microsoft };

    protected override ResidualStart FindStart(GraphEditor graph, DecoderIo io)
    {
        var tokens = TorchGpt2Family.EmbeddingLookup(graph, io.InputIds.Name);
        var norms = graph.Consumers(tokens.Output[0]).Where(IsNorm).ToArray();
        if (norms.Length != 1)
            throw new InvalidDataException($"expected one SimplifiedLayerNormalization (block 0's input norm) "
                + $"reading the token embedding "
                + $"{Describe(tokens)}; found {Describe(graph.Consumers(tokens.Output[0]))}");
        return new ResidualStart(tokens.Output[0], norms[0].Output[0], graph.Initializer(tokens.Input[0])!, null,
            $"token embedding {Describe(tokens)}");
    }

    protected override ResidualStep? Step(GraphEditor graph, string residual, string prefix, List<string> rewrites) =>
        SkipNormSplitter.SimplifiedLayerNorm.SplitStep(graph, residual, prefix, rewrites);

    protected override ModelArchitecture Architecture(GraphEditor graph, DecoderIo io, DecoderWalk walk,
        SourceHints hints)
    {
        var table = walk.Start.TokenTable;
        int d = (int)table.Dims[1];
        var attention = walk.Blocks[0].AttentionNodes.First(IsAttention);
        long Attribute(NodeProto node, string name) => node.Attribute.FirstOrDefault(a => a.Name == name)?.I
            ?? throw new InvalidDataException($"{Describe(node)} has no {name}");
        var (cosCache, interleaved) = Rotary(graph, walk.Blocks[0], attention);
        var headSize = 2 * (int)cosCache.Dims[1];
        // GroupQueryAttention names both head counts. MultiHeadAttention's num_heads need not be the model's: with
        // fewer kv heads a graph may fold each kv head's query heads into the sequence axis (our fused export does),
        // so there the heads follow from d_model and the rotary head size, and the kv heads from the past.
        var gqa = attention.OpType == "GroupQueryAttention";
        var kvHeads = gqa ? (int)Attribute(attention, "kv_num_heads") : io.Kv.Heads;
        if (kvHeads != io.Kv.Heads)
            throw new InvalidDataException($"{Describe(attention)} has {kvHeads} kv heads but its past has {io.Kv.Heads}");
        if (!gqa && d % headSize != 0)
            throw new InvalidDataException($"d_model {d} is not a multiple of the rotary head size {headSize} "
                + $"(cos cache of {Describe(attention)})");
        var heads = gqa ? (int)Attribute(attention, "num_heads") : d / headSize;
        var norm = graph.Producer(walk.Start.FirstNormOutput)!;
        return new ModelArchitecture
        {
            Family = "llama",
            DModel = d,
            HiddenDim = MlpHiddenSize(graph, walk.Blocks[0], d),
            Layers = walk.Blocks.Count,
            Heads = heads,
            KvHeads = kvHeads,
            HeadDim = headSize == d / heads ? null : headSize,
            VocabSize = (int)table.Dims[0],
            ContextLength = (int)cosCache.Dims[0],
            Norm = NormKind.RmsNorm,
            NormEpsilon = norm.Attribute.FirstOrDefault(a => a.Name == "epsilon")?.F ?? 1e-5f,
            Mlp = MlpKind.SwiGlu,
            Positions = PositionEmbedding.Rotary,
            Rotary = interleaved ? RotaryConvention.Interleaved : RotaryConvention.Half,
            TiedEmbeddings = false,
        };
    }

    /// <summary>The cos cache and pairing of the rotary embedding: a RotaryEmbedding node, or GQA's own do_rotary.</summary>
    private static (TensorProto CosCache, bool Interleaved) Rotary(GraphEditor graph, BlockWalk block, NodeProto attention)
    {
        var rotary = block.AttentionNodes.FirstOrDefault(n => n is { OpType: "RotaryEmbedding", Domain: Microsoft });
        var (node, cosInput, flag) = rotary is not null ? (rotary, 2, "interleaved") : (attention, 7, "rotary_interleaved");
        if (node.Input.Count <= cosInput || graph.Initializer(node.Input[cosInput]) is not { Dims.Count: 2 } cos)
            throw new InvalidDataException($"blocks.0: expected rotary embedding (com.microsoft RotaryEmbedding, or "
                + $"a cos cache on "
                + $"{Describe(attention)}); found none");
        return (cos, (node.Attribute.FirstOrDefault(a => a.Name == flag)?.I ?? 0) != 0);
    }
}
