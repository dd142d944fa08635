using FeatureFlow.Onnx;
using FeatureFlow.Onnx.Ir;

namespace FeatureFlow.Models.Hooking;

/// <summary>
/// GPT-2 as torch.onnx and Hugging Face Optimum export it with plain ai.onnx operators: token and position
/// embeddings (Gather) added, then per block LayerNormalization → attention (Softmax) → projection (Gemm/MatMul + bias)
/// → residual Add, LayerNormalization → MLP → residual Add, and a final LayerNormalization before the logits MatMul.
/// Every site is already a value of the graph; nothing is rewritten.
/// </summary>
public sealed class TorchGpt2Family : ResidualStreamFamily
{
    public override string Name => "torch-gpt2";

    public override string Expects =>
        "plain ai.onnx GPT-2 (torch.onnx/Optimum): LayerNormalization, Softmax attention and residual Add chains";

    protected override string AttentionMark => "Softmax";

    public override bool Claims(GraphEditor graph) =>
        graph.Graph.Node.Any(n => IsNorm(n)) && graph.Graph.Node.Any(IsAttention)
        && graph.Graph.Node.All(n => n.Domain is "" or "ai.onnx");

    protected override bool IsAttention(NodeProto node) => node is { OpType: "Softmax", Domain: "" or "ai.onnx" };

    private static bool IsNorm(NodeProto node) => node is { OpType: "LayerNormalization", Domain: "" or "ai.onnx" };

    protected override ResidualStart FindStart(GraphEditor graph, DecoderIo io)
    {
        var tokens = EmbeddingLookup(graph, io.InputIds.Name);
        var sums = graph.Consumers(tokens.Output[0]).Where(n => n.OpType == "Add").ToArray();
        if (sums.Length != 1)
            throw new InvalidDataException($"expected the token embedding {Describe(tokens)} to be added to a "
                + $"learned position "
                + $"embedding; found {Describe(graph.Consumers(tokens.Output[0]))} reading it");
        var sum = sums[0];
        var other = sum.Input[0] == tokens.Output[0] ? sum.Input[1] : sum.Input[0];
        var positions = graph.Producer(other) is { OpType: "Gather" } p && graph.Initializer(p.Input[0]) is { } table ? table
            : throw new InvalidDataException($"expected {Describe(sum)} to add a position embedding (Gather from a "
                + $"table) to the "
                + $"tokens; its other input '{other}' comes from "
                + $"{(graph.Producer(other) is { } q ? Describe(q) : "outside any node")}");
        var norm = SingleNorm(graph, sum.Output[0], "blocks.0's first LayerNormalization");
        return new ResidualStart(sum.Output[0], norm, graph.Initializer(tokens.Input[0])!, positions,
            $"{Describe(tokens)} + position Gather, summed by {Describe(sum)}");
    }

    /// <summary>The Gather from an embedding table that reads the token ids (possibly through a Reshape or Cast).</summary>
    internal static NodeProto EmbeddingLookup(GraphEditor graph, string inputIds)
    {
        var pending = new Queue<string>([inputIds]);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        while (pending.TryDequeue(out var value))
        {
            if (!seen.Add(value)) continue;
            foreach (var node in graph.Consumers(value))
            {
                if (node.OpType == "Gather" && node.Input[1] == value && graph.Initializer(node.Input[0]) is { Dims.Count: 2 }) return node;
                if (node.OpType is "Reshape" or "Cast" or "Unsqueeze" or "Squeeze" or "Identity" && node.Input[0] == value)
                    pending.Enqueue(node.Output[0]);
            }
        }
        throw new InvalidDataException($"expected '{inputIds}' to index a token embedding table (Gather from a 2-D "
            + $"initializer); "
            + $"found {Describe(graph.Consumers(inputIds))} reading it");
    }

    protected override ResidualStep? Step(GraphEditor graph, string residual, string prefix, List<string> rewrites)
    {
        if (ResidualAdd(graph, residual, i => graph.Initializer(i) is not null) is not var (add, branch)) return null;
        var sum = add.Output[0];
        var norms = graph.Consumers(sum).Where(IsNorm).ToArray();
        if (norms.Length > 1) throw new InvalidDataException($"expected one LayerNormalization reading '{sum}'; "
            + $"found {Describe(norms)}");
        var from = graph.Producer(branch) is { } p ? $" (from {Describe(p)})" : "";
        return new ResidualStep(branch, sum, norms.Length == 1 ? norms[0].Output[0] : null, $"input of residual "
            + $"{Describe(add)}{from}",
            $"output of residual {Describe(add)}");
    }

    private static string SingleNorm(GraphEditor graph, string value, string what)
    {
        var norms = graph.Consumers(value).Where(IsNorm).ToArray();
        return norms.Length == 1 ? norms[0].Output[0]
            : throw new InvalidDataException($"expected {what} to read '{value}'; found {Describe(graph.Consumers(value))}");
    }

    protected override ModelArchitecture Architecture(GraphEditor graph, DecoderIo io, DecoderWalk walk,
        SourceHints hints)
    {
        var norm = graph.Graph.Node.First(IsNorm);
        return Gpt2Architecture(graph, walk, io.Kv.Heads,
            norm.Attribute.FirstOrDefault(a => a.Name == "epsilon")?.F ?? 1e-5f);
    }
}
