using FeatureFlow.Onnx;
using FeatureFlow.Onnx.Ir;
using DataType = FeatureFlow.Onnx.Ir.TensorProto.Types.DataType;

namespace FeatureFlow.Models.Hooking;

/// <summary>Where the residual stream starts: the embedding sum and block 0's normalised input.</summary>
public sealed record ResidualStart(string Residual, string FirstNormOutput, TensorProto TokenTable, TensorProto? PositionTable,
    string Found);

/// <summary>
/// One residual update as the graph spells it: <see cref="Sum"/> = residual + <see cref="Branch"/>, and the norm that
/// reads the sum (the next block's input norm, or the final norm); <see cref="Found"/> and <see cref="SumFound"/> say
/// where the branch and the sum are, for the manifest and messages.
/// </summary>
public sealed record ResidualStep(string Branch, string Sum, string? NormOutput, string Found, string SumFound);

/// <summary>
/// The pre-norm decoder walk every family shares: from the embedding, each block adds an attention branch and then
/// an MLP branch to the residual stream, each branch reading the norm of the stream before it; the last norm feeds
/// the logits. A family says how its graphs spell the start, one residual update and attention; this class walks
/// the chain, counts the blocks and checks each branch, so every family refuses the same malformed structures.
/// </summary>
public abstract class ResidualStreamFamily : IDecoderFamily
{
    public abstract string Name { get; }
    public abstract string Expects { get; }
    public abstract bool Claims(GraphEditor graph);

    /// <summary>What marks an attention branch, for messages ("Softmax", "com.microsoft Attention").</summary>
    protected abstract string AttentionMark { get; }

    protected abstract ResidualStart FindStart(GraphEditor graph, DecoderIo io);

    /// <summary>
    /// The residual update that reads <paramref name="residual"/>, rewriting a fused node into plain operators if it
    /// hides the branch or the sum (naming new values under <paramref name="prefix"/>, noting it in
    /// <paramref name="rewrites"/>); null when nothing adds to the residual any more (the end of the stream).
    /// </summary>
    protected abstract ResidualStep? Step(GraphEditor graph, string residual, string prefix, List<string> rewrites);

    protected abstract bool IsAttention(NodeProto node);

    /// <summary>The architecture the walk shows, completed from the family's own nodes and the KV inputs.</summary>
    protected abstract ModelArchitecture Architecture(GraphEditor graph, DecoderIo io, DecoderWalk walk,
        SourceHints hints);

    public RecognizedDecoder Recognize(GraphEditor graph, DecoderIo io, string prefix, SourceHints hints)
    {
        var walk = Walk(graph, io, prefix);
        var floatType = (DataType)walk.Start.TokenTable.DataType;
        if (floatType is not (DataType.Float or DataType.Float16))
            throw new InvalidDataException(
                $"token embedding '{walk.Start.TokenTable.Name}' is {floatType}; expected float or float16");
        var sites = new List<SiteTap>();
        foreach (var (block, l) in walk.Blocks.Select((b, l) => (b, l)))
        {
            sites.Add(new SiteTap(new Site(l, SiteKind.AttnOut), block.Attention.Branch, block.Attention.Found));
            sites.Add(new SiteTap(new Site(l, SiteKind.MlpOut), block.Mlp.Branch, block.Mlp.Found));
            sites.Add(new SiteTap(new Site(l, SiteKind.ResidPost), block.Mlp.Sum, block.Mlp.SumFound));
        }
        return new RecognizedDecoder(Name, Architecture(graph, io, walk, hints), floatType, sites, walk.Rewrites);
    }

    private DecoderWalk Walk(GraphEditor graph, DecoderIo io, string prefix)
    {
        var start = FindStart(graph, io);
        var rewrites = new List<string>();
        var blocks = new List<BlockWalk>();
        var residuals = new HashSet<string>(StringComparer.Ordinal) { start.Residual };
        var (residual, norm) = (start.Residual, start.FirstNormOutput);
        while (Step(graph, residual, prefix, rewrites) is { } attention)
        {
            var where = $"blocks.{blocks.Count}";
            var attentionNodes = Branch(graph, attention.Branch, norm, residuals, where, "attention");
            if (!attentionNodes.Any(IsAttention))
                throw new InvalidDataException($"{where}: expected attention ({AttentionMark}) on the branch from "
                    + $"'{norm}' to the {attention.Found}; found {Describe(attentionNodes)}");
            residuals.Add(attention.Sum);
            var mlpNorm = attention.NormOutput ?? throw new InvalidDataException(
                $"{where}: expected a norm reading the residual after attention ('{attention.Sum}'); found "
                    + $"{Describe(graph.Consumers(attention.Sum))}");
            var mlp = Step(graph, attention.Sum, prefix, rewrites) ?? throw new InvalidDataException(
                $"{where}: expected the MLP's residual update of '{attention.Sum}'; found "
                    + $"{Describe(graph.Consumers(attention.Sum))}");
            var mlpNodes = Branch(graph, mlp.Branch, mlpNorm, residuals, where, "MLP");
            if (mlpNodes.FirstOrDefault(IsAttention) is { } stray)
                throw new InvalidDataException($"{where}: expected an MLP on the branch from '{mlpNorm}' to the "
                    + $"{mlp.Found}; found attention {Describe([stray])}");
            if (!mlpNodes.Any(n => n.OpType is "MatMul" or "Gemm"))
                throw new InvalidDataException($"{where}: expected an MLP (MatMul/Gemm) on the branch from "
                    + $"'{mlpNorm}' to the {mlp.Found}; found {Describe(mlpNodes)}");
            residuals.Add(mlp.Sum);
            blocks.Add(new BlockWalk(attention, mlp, attentionNodes, mlpNodes));
            (residual, norm) = (mlp.Sum, mlp.NormOutput ?? throw new InvalidDataException(
                $"{where}: expected a norm reading the block's output '{mlp.Sum}'; found "
                    + $"{Describe(graph.Consumers(mlp.Sum))}"));
        }
        if (blocks.Count == 0)
            throw new InvalidDataException($"expected transformer blocks after the embedding ({start.Found}); found "
                + $"{Describe(graph.Consumers(start.Residual))}"
                + $" reading '{start.Residual}'");
        CheckFinalNormFeedsLogits(graph, norm, io.Logits.Name);
        return new DecoderWalk(start, blocks, norm, rewrites);
    }

    /// <summary>
    /// The nodes computing <paramref name="branchValue"/> back to the norm output it must read, never crossing the
    /// residual stream; refuses a branch that does not read the norm, or that does not end in a projection.
    /// </summary>
    private static IReadOnlyList<NodeProto> Branch(GraphEditor graph, string branchValue, string normOutput,
        HashSet<string> residuals, string where, string what)
    {
        var nodes = new List<NodeProto>();
        var visited = new HashSet<NodeProto>(ReferenceEqualityComparer.Instance);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var pending = new Queue<string>([branchValue]);
        var readsNorm = false;
        while (pending.TryDequeue(out var value))
        {
            if (!seen.Add(value)) continue;
            if (value == normOutput) { readsNorm = true; continue; }
            if (residuals.Contains(value)) continue;
            if (graph.Producer(value) is not { } node || !visited.Add(node)) continue;
            nodes.Add(node);
            foreach (var input in node.Input.Where(i => i.Length > 0)) pending.Enqueue(input);
        }
        if (!readsNorm)
            throw new InvalidDataException($"{where}: expected the {what} branch '{branchValue}' to read the norm "
                + $"output '{normOutput}'; "
                + $"found {Describe(nodes)}");
        var end = SkipViews(graph, branchValue);
        var projected = graph.Producer(end) is { } last && (last.OpType is "MatMul" or "Gemm"
            || (last.OpType == "Add" && last.Input.Any(i => graph.Initializer(i) is not null)));
        if (!projected)
            throw new InvalidDataException($"{where}: expected the {what} output projection (MatMul/Gemm, optionally "
                + $"+ bias) to "
                + $"end the branch at '{branchValue}'; found {Describe(graph.Producer(end) is { } p ? [p] : [])}");
        return nodes;
    }

    /// <summary>Walks back through shape-only operators (Reshape, Identity, Squeeze, Unsqueeze) to the value they view.</summary>
    protected static string SkipViews(GraphEditor graph, string value)
    {
        while (graph.Producer(value) is { OpType: "Reshape" or "Identity" or "Squeeze" or "Unsqueeze", Domain: "" } view)
            value = view.Input[0];
        return value;
    }

    private static void CheckFinalNormFeedsLogits(GraphEditor graph, string finalNorm, string logits)
    {
        var value = logits;
        var node = graph.Producer(SkipViews(graph, value));
        if (node is null || node.OpType is not ("MatMul" or "Gemm"))
            throw new InvalidDataException($"expected the logits '{logits}' to come from a MatMul/Gemm; found "
                + $"{Describe(node is null ? [] : [node])}");
        if (SkipViews(graph, node.Input[0]) != finalNorm)
            throw new InvalidDataException($"expected the final norm '{finalNorm}' to feed the logits {Describe([node])}; "
                + $"it reads '{node.Input[0]}'");
    }

    public static string Describe(NodeProto node) =>
        $"{(node.Domain is "" or "ai.onnx" ? "" : node.Domain + ".")}{node.OpType} '{node.Name}'";

    protected internal static string Describe(IEnumerable<NodeProto> nodes)
    {
        var all = nodes.ToArray();
        if (all.Length == 0) return "nothing";
        var shown = string.Join(", ", all.Take(6).Select(Describe));
        return all.Length > 6 ? $"{shown} and {all.Length - 6} more" : shown;
    }

    /// <summary>The inner (non-<paramref name="dModel"/>) size of the MLP: the other dimension of its first 2-D weight.</summary>
    /// <summary>
    /// The one plain Add that adds a branch to <paramref name="residual"/> (neither input a constant), or null at the
    /// end of the stream; two such Adds are refused.
    /// </summary>
    protected static (NodeProto Add, string Branch)? ResidualAdd(GraphEditor graph, string residual,
        Func<string, bool> isConstant)
    {
        var adds = graph.Consumers(residual)
            .Where(n => n is { OpType: "Add", Domain: "" or "ai.onnx" } && !n.Input.Any(isConstant))
            .ToArray();
        if (adds.Length == 0) return null;
        if (adds.Length > 1)
            throw new InvalidDataException($"expected one residual Add reading '{residual}'; found {Describe(adds)}");
        var add = adds[0];
        return (add, add.Input[0] == residual ? add.Input[1] : add.Input[0]);
    }

    /// <summary>A GPT-2's shape as a walked graph shows it: tables, block count and MLP width from the graph.</summary>
    protected static ModelArchitecture Gpt2Architecture(GraphEditor graph, DecoderWalk walk, int heads, float epsilon)
    {
        var table = walk.Start.TokenTable;
        int d = (int)table.Dims[1];
        return new ModelArchitecture
        {
            Family = "gpt2",
            DModel = d,
            HiddenDim = MlpHiddenSize(graph, walk.Blocks[0], d),
            Layers = walk.Blocks.Count,
            Heads = heads,
            KvHeads = heads,
            VocabSize = (int)table.Dims[0],
            ContextLength = (int)walk.Start.PositionTable!.Dims[0],
            Norm = NormKind.LayerNorm,
            NormEpsilon = epsilon,
            Mlp = MlpKind.Gelu,
            Positions = PositionEmbedding.Learned,
            TiedEmbeddings = false,
        };
    }

    protected static int MlpHiddenSize(GraphEditor graph, BlockWalk block, int dModel)
    {
        foreach (var node in block.MlpNodes.Reverse())
            foreach (var input in node.Input)
                if (graph.Initializer(input) is { Dims.Count: 2 } w && (w.Dims[0] != dModel || w.Dims[1] != dModel))
                    return (int)(w.Dims[0] == dModel ? w.Dims[1] : w.Dims[0]);
        return dModel;
    }
}

/// <summary>One block as walked: its two residual updates and the nodes of each branch.</summary>
public sealed record BlockWalk(ResidualStep Attention, ResidualStep Mlp, IReadOnlyList<NodeProto> AttentionNodes,
    IReadOnlyList<NodeProto> MlpNodes);

/// <summary>The whole residual chain: start, blocks, the final norm's output and the fused nodes rewritten on the way.</summary>
public sealed record DecoderWalk(ResidualStart Start, IReadOnlyList<BlockWalk> Blocks, string FinalNormOutput,
    IReadOnlyList<string> Rewrites);
