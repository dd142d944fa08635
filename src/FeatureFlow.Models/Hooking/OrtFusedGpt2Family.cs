using FeatureFlow.Onnx;
using FeatureFlow.Onnx.Ir;

namespace FeatureFlow.Models.Hooking;

/// <summary>
/// GPT-2 as ONNX Runtime's transformer optimizer fuses it (onnxruntime-genai's GPT-2 models): EmbedLayerNormalization
/// (token + position tables, block 0's LayerNorm, the embedding sum as output 2), per block com.microsoft Attention
/// over packed QKV with a packed past, MatMul projection, SkipLayerNormalization (projection bias + residual + next
/// LayerNorm, the sum as optional output 3), FastGelu MLP, and a last SkipLayerNormalization as the final norm.
/// Every SkipLayerNormalization hides the branch before the residual add and the sum before the norm, so each is
/// split into Add (bias) + Add (residual) + LayerNormalization.
/// </summary>
public sealed class OrtFusedGpt2Family : ResidualStreamFamily
{
    private const string Microsoft = "com.microsoft";

    public override string Name => "onnxruntime-fused-gpt2";

    public override string Expects =>
        "ONNX Runtime transformer-optimizer GPT-2: com.microsoft EmbedLayerNormalization, Attention and SkipLayerNormalization";

    protected override string AttentionMark => "com.microsoft Attention";

    public override bool Claims(GraphEditor graph) =>
        graph.Graph.Node.Any(n => n is { OpType: "EmbedLayerNormalization", Domain: Microsoft })
        && graph.Graph.Node.Any(n => SkipNormSplitter.LayerNorm.Matches(n));

    protected override bool IsAttention(NodeProto node) => node is { OpType: "Attention", Domain: Microsoft };

    protected override ResidualStart FindStart(GraphEditor graph, DecoderIo io)
    {
        var embeds = graph.Graph.Node.Where(n => n is { OpType: "EmbedLayerNormalization", Domain: Microsoft }).ToArray();
        if (embeds.Length != 1)
            throw new InvalidDataException($"expected one com.microsoft.EmbedLayerNormalization; found {Describe(embeds)}");
        var embed = embeds[0];
        if (embed.Output.Count < 3 || embed.Output[2].Length == 0)
            throw new InvalidDataException($"expected {Describe(embed)} to output the embedding sum (output 2), the "
                + $"residual "
                + "stream's start; it does not");
        var table = Table(graph, embed, 2, "word embedding");
        var positions = Table(graph, embed, 3, "position embedding");
        return new ResidualStart(embed.Output[2], embed.Output[0], table, positions,
            $"output 2 (embedding sum) of {Describe(embed)}");
    }

    private static TensorProto Table(GraphEditor graph, NodeProto embed, int input, string what) =>
        embed.Input.Count > input && graph.Initializer(embed.Input[input]) is { Dims.Count: 2 } t ? t
            : throw new InvalidDataException($"expected {Describe(embed)} input {input} to be the {what} table (a "
                + $"2-D initializer)");

    protected override ResidualStep? Step(GraphEditor graph, string residual, string prefix, List<string> rewrites) =>
        SkipNormSplitter.LayerNorm.SplitStep(graph, residual, prefix, rewrites);

    protected override ModelArchitecture Architecture(GraphEditor graph, DecoderIo io, DecoderWalk walk,
        SourceHints hints)
    {
        var attention = walk.Blocks[0].AttentionNodes.First(IsAttention);
        var heads = (int)(attention.Attribute.FirstOrDefault(a => a.Name == "num_heads")?.I
            ?? throw new InvalidDataException($"{Describe(attention)} has no num_heads"));
        if (heads != io.Kv.Heads)
            throw new InvalidDataException($"{Describe(attention)} has num_heads {heads} but its past has "
                + $"{io.Kv.Heads} heads");
        var embed = graph.Producer(walk.Start.Residual)!;
        return Gpt2Architecture(graph, walk, heads,
            embed.Attribute.FirstOrDefault(a => a.Name == "epsilon")?.F ?? 1e-12f);
    }
}
