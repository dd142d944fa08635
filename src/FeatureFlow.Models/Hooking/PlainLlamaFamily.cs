using System.Runtime.InteropServices;
using FeatureFlow.Onnx;
using FeatureFlow.Onnx.Ir;
using DataType = FeatureFlow.Onnx.Ir.TensorProto.Types.DataType;

namespace FeatureFlow.Models.Hooking;

/// <summary>
/// Llama-style decoders written with plain ai.onnx operators, as our own exporter writes <c>decoder.onnx</c> and as
/// torch.onnx exports a Hugging Face Llama: token Gather, per block an RMSNorm spelled out (x·x or Pow(x, 2) →
/// ReduceMean → Add ε → Sqrt → Reciprocal and Mul, or Div; then Mul by the weight), attention with Softmax and rotary
/// embedding (interleaved pairs, or rotate_half with Neg/Concat), MatMul projection, residual Add, the same norm, a
/// gated MLP, residual Add, and a final RMSNorm before the logits MatMul. Every site is already a value of the graph;
/// nothing is rewritten. The graph does not carry its context length, so that comes from the folder's config.
/// </summary>
public sealed class PlainLlamaFamily : ResidualStreamFamily
{
    private static readonly HashSet<string> FusedOperators = new(StringComparer.Ordinal)
    {
        "LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
        "SkipSimplifiedLayerNormalization", "EmbedLayerNormalization", "Attention", "MultiHeadAttention",
        "GroupQueryAttention", "RotaryEmbedding",
    };

    public override string Name => "plain-llama";

    public override string Expects => "plain ai.onnx Llama (our exporter, torch.onnx): ReduceMean RMSNorm, Softmax "
        + "attention with rotary embedding and residual Add chains, no fused norm or attention operators";

    protected override string AttentionMark => "Softmax";

    public override bool Claims(GraphEditor graph) =>
        !graph.Graph.Node.Any(n => FusedOperators.Contains(n.OpType))
        && graph.Graph.Node.Any(IsAttention)
        && graph.Graph.Node.Any(n => n.OpType == "ReduceMean" && graph.Producer(n.Input[0]) is { } square
            && Squared(graph, square) is { } x && graph.Producer(x)?.OpType != "Sub");

    protected override bool IsAttention(NodeProto node) => node is { OpType: "Softmax", Domain: "" or "ai.onnx" };

    protected override ResidualStart FindStart(GraphEditor graph, DecoderIo io)
    {
        var tokens = TorchGpt2Family.EmbeddingLookup(graph, io.InputIds.Name);
        var norm = RmsNorm(graph, tokens.Output[0]) ?? throw new InvalidDataException(
            $"blocks.0: expected an RMSNorm (ReduceMean of the square, + ε, Sqrt, scaled by a weight) reading the "
            + $"token embedding {Describe(tokens)}; found {Describe(graph.Consumers(tokens.Output[0]))}");
        return new ResidualStart(tokens.Output[0], norm.Output, graph.Initializer(tokens.Input[0])!, null,
            $"token embedding {Describe(tokens)}");
    }

    protected override ResidualStep? Step(GraphEditor graph, string residual, string prefix, List<string> rewrites)
    {
        if (ResidualAdd(graph, residual, i => Constant(graph, i) is not null) is not var (add, branch)) return null;
        var from = graph.Producer(branch) is { } p ? $" (from {Describe(p)})" : "";
        return new ResidualStep(branch, add.Output[0], RmsNorm(graph, add.Output[0])?.Output,
            $"input of residual {Describe(add)}{from}", $"output of residual {Describe(add)}");
    }

    protected override ModelArchitecture Architecture(GraphEditor graph, DecoderIo io, DecoderWalk walk,
        SourceHints hints)
    {
        var table = walk.Start.TokenTable;
        int d = (int)table.Dims[1], kvHeads = io.Kv.Heads, headSize = io.Kv.HeadSize;
        var block = walk.Blocks[0];
        var heads = QueryWidth(graph, block, walk.Start.FirstNormOutput, kvHeads * headSize) / headSize;
        var epsilon = RmsNorm(graph, walk.Start.Residual)!.Value.Epsilon;
        if (!block.MlpNodes.Any(n => n.OpType == "Sigmoid"))
            throw new InvalidDataException($"blocks.0: expected a SwiGLU MLP (SiLU as Sigmoid · x); found "
                + Describe(block.MlpNodes));
        var contextLength = hints.ContextLength ?? throw new InvalidDataException(
            "a plain Llama graph does not say its context length; expected context_length or "
            + "max_position_embeddings in genai_config.json or config.json beside it; found none");
        return new ModelArchitecture
        {
            Family = "llama",
            DModel = d,
            HiddenDim = MlpHiddenSize(graph, block, d),
            Layers = walk.Blocks.Count,
            Heads = heads,
            KvHeads = kvHeads,
            HeadDim = headSize == d / heads ? null : headSize,
            VocabSize = (int)table.Dims[0],
            ContextLength = contextLength,
            Norm = NormKind.RmsNorm,
            NormEpsilon = epsilon,
            Mlp = MlpKind.SwiGlu,
            Positions = PositionEmbedding.Rotary,
            Rotary = Convention(graph, block),
            RotaryTheta = Theta(graph, headSize, hints),
            TiedEmbeddings = ClassifierIsTokenTable(graph, io, table),
        };
    }

    /// <summary>The RMSNorm reading <paramref name="x"/>: its output (after the weight) and ε; null if none.</summary>
    private static (string Output, float Epsilon)? RmsNorm(GraphEditor graph, string x)
    {
        foreach (var square in Readers(graph, x).Where(n => Squared(graph, n) == x))
        {
            if (Single(graph, square.Output[0], "ReduceMean") is not { } mean
                || Single(graph, mean.Output[0], "Add") is not { } add
                || Constant(graph, add.Input[0] == mean.Output[0] ? add.Input[1] : add.Input[0]) is not [var eps]
                || Single(graph, add.Output[0], "Sqrt") is not { } sqrt
                || Normalised(graph, x, sqrt.Output[0]) is not { } normalised)
                continue;
            var weighted = Readers(graph, normalised).FirstOrDefault(n => n.OpType == "Mul"
                && Constant(graph, n.Input[0] == normalised ? n.Input[1] : n.Input[0]) is not null);
            if (weighted is not null) return (weighted.Output[0], (float)eps);
        }
        return null;
    }

    /// <summary>x / √(mean + ε) as Reciprocal + Mul(x), Div(1, ·) + Mul(x) or Div(x, ·); null if none.</summary>
    private static string? Normalised(GraphEditor graph, string x, string root)
    {
        foreach (var node in Readers(graph, root))
        {
            var inverse = node.OpType == "Reciprocal"
                || (node.OpType == "Div" && node.Input[1] == root && Constant(graph, node.Input[0]) is [1]);
            if (inverse && Readers(graph, node.Output[0]).FirstOrDefault(m => m.OpType == "Mul" && m.Input.Contains(x))
                    is { } scaled)
                return scaled.Output[0];
            if (node.OpType == "Div" && node.Input[0] == x && node.Input[1] == root) return node.Output[0];
        }
        return null;
    }

    /// <summary>The value a Mul(x, x) or Pow(x, 2) squares; null for any other node.</summary>
    private static string? Squared(GraphEditor graph, NodeProto node) => node switch
    {
        { OpType: "Mul" } when node.Input[0] == node.Input[1] => node.Input[0],
        { OpType: "Pow" } when Constant(graph, node.Input[1]) is [2] => node.Input[0],
        _ => null,
    };

    private static IEnumerable<NodeProto> Readers(GraphEditor graph, string value) =>
        graph.Consumers(value).Where(n => n.Domain is "" or "ai.onnx");

    private static NodeProto? Single(GraphEditor graph, string value, string opType) =>
        Readers(graph, value).Where(n => n.OpType == opType).ToArray() is [var only] ? only : null;

    /// <summary>
    /// The query projection's width: the widest projection reading block 0's attention norm (q is never narrower
    /// than k or v), or a fused QKV projection's width less the key and value widths.
    /// </summary>
    private static int QueryWidth(GraphEditor graph, BlockWalk block, string norm, int kvDim)
    {
        var widths = block.AttentionNodes
            .Where(n => n.OpType is "MatMul" && n.Input[0] == norm
                && graph.Initializer(n.Input[1]) is { Dims.Count: 2 })
            .Select(n => (int)graph.Initializer(n.Input[1])!.Dims[1]).ToArray();
        var width = widths.Length switch
        {
            1 => widths[0] - 2 * kvDim,
            3 => widths.Max(),
            _ => throw new InvalidDataException($"blocks.0: expected q, k and v projections (MatMul by a 2-D "
                + $"initializer) reading the attention norm '{norm}'; found {widths.Length}"),
        };
        return width > 0 ? width
            : throw new InvalidDataException($"blocks.0: a fused QKV projection of width {widths[0]} leaves no room "
                + $"for queries beside keys and values of width {kvDim} each");
    }

    /// <summary>
    /// How the graph pairs rotary channels: rotate_half negates one half and concatenates (Neg → Concat); the
    /// interleaved form views each head as [head_size/2, 2] pairs and splits the last axis. Anything else, or both,
    /// is refused rather than guessed.
    /// </summary>
    private static RotaryConvention Convention(GraphEditor graph, BlockWalk block)
    {
        var half = block.AttentionNodes.Any(n => n.OpType == "Neg"
            && graph.Consumers(n.Output[0]).Any(c => c.OpType == "Concat"));
        var interleaved = block.AttentionNodes.Any(n => n.OpType is "Split" or "Slice" or "Gather"
            && graph.Producer(n.Input[0]) is { OpType: "Reshape" } view
            && Constant(graph, view.Input[1]) is { Length: > 1 } shape && shape[^1] == 2);
        return (half, interleaved) switch
        {
            (true, false) => RotaryConvention.Half,
            (false, true) => RotaryConvention.Interleaved,
            _ => throw new InvalidDataException("blocks.0: expected rotary embedding either as rotate_half (Neg → "
                + "Concat) or as interleaved pairs (Reshape to [..., head_size/2, 2] then Split); found "
                + (half ? "both" : "neither") + $" among {Describe(block.AttentionNodes)}"),
        };
    }

    /// <summary>
    /// Rope theta from the rotary inverse frequencies (inv_freq[i] = θ^(−2i/head_size)), refusing scaled ones; from
    /// the config when the graph folded them into cos/sin tables.
    /// </summary>
    private static float Theta(GraphEditor graph, int headSize, SourceHints hints)
    {
        var inverse = graph.Graph.Initializer.Where(t => t.Name.EndsWith("inv_freq", StringComparison.Ordinal))
            .ToArray();
        if (inverse.Length == 0)
            return hints.RopeTheta ?? throw new InvalidDataException("expected the rotary frequencies as an "
                + "initializer named …inv_freq, or rope_theta in config.json beside the graph; found neither");
        var freqs = Constant(graph, inverse[0].Name);
        if (freqs is null || freqs.Length != headSize / 2 || headSize < 4)
            throw new InvalidDataException($"expected '{inverse[0].Name}' to hold head_size/2 = {headSize / 2} "
                + $"inline frequencies; found [{string.Join(", ", inverse[0].Dims)}]");
        var theta = Math.Pow(freqs[1], -headSize / 2.0);
        for (var i = 0; i < freqs.Length; i++)
        {
            var expected = Math.Pow(theta, -2.0 * i / headSize);
            if (Math.Abs(freqs[i] - expected) > 1e-4 * expected)
                throw new InvalidDataException($"'{inverse[0].Name}'[{i}] is {freqs[i]}, not θ^(−2i/head_size) = "
                    + $"{expected} for θ = {theta}: scaled rotary frequencies are not supported");
        }
        return (float)theta;
    }

    /// <summary>Whether the logits MatMul reads the token table (transposed, or by Gemm transB), not its own.</summary>
    private static bool ClassifierIsTokenTable(GraphEditor graph, DecoderIo io, TensorProto table)
    {
        var logits = graph.Producer(SkipViews(graph, io.Logits.Name))!;
        var weight = logits.Input[1];
        if (graph.Producer(weight) is { OpType: "Transpose" } transpose) weight = transpose.Input[0];
        return weight == table.Name;
    }

    /// <summary>The numbers of a float or integer constant (initializer or Constant node); null otherwise.</summary>
    private static double[]? Constant(GraphEditor graph, string value)
    {
        var tensor = graph.Initializer(value) ?? (graph.Producer(value) is { OpType: "Constant" } c
            ? c.Attribute.FirstOrDefault(a => a.Name == "value")?.T : null);
        if (tensor is null || ExternalData.IsExternal(tensor)) return null;
        var raw = tensor.RawData.Span;
        return (DataType)tensor.DataType switch
        {
            DataType.Float => raw.IsEmpty ? tensor.FloatData.Select(f => (double)f).ToArray()
                : MemoryMarshal.Cast<byte, float>(raw).ToArray().Select(f => (double)f).ToArray(),
            DataType.Float16 => MemoryMarshal.Cast<byte, Half>(raw).ToArray().Select(h => (double)h).ToArray(),
            DataType.Int64 => raw.IsEmpty ? tensor.Int64Data.Select(i => (double)i).ToArray()
                : MemoryMarshal.Cast<byte, long>(raw).ToArray().Select(i => (double)i).ToArray(),
            DataType.Int32 => raw.IsEmpty ? tensor.Int32Data.Select(i => (double)i).ToArray()
                : MemoryMarshal.Cast<byte, int>(raw).ToArray().Select(i => (double)i).ToArray(),
            _ => null,
        };
    }
}
