using FeatureFlow.Onnx;
using FeatureFlow.Onnx.Ir;

namespace FeatureFlow.Models.Hooking;

/// <summary>
/// Splits a fused com.microsoft Skip(Simplified)LayerNormalization — out = norm(input + skip + bias), with the sum as
/// optional output 3 — into the plain operators it stands for: branch = input + bias, sum = residual + branch,
/// out = (Simplified)LayerNormalization(sum). The fused node hides two sites (the branch before the residual add and
/// the sum before the norm); after the split both are ordinary values. The norm output and the sum keep the fused
/// node's output names, so its readers need no rewiring.
/// </summary>
internal sealed record SkipNormSplitter(string FusedOp, string NormOp, int BiasInput, bool HasBeta)
{
    public static readonly SkipNormSplitter LayerNorm = new("SkipLayerNormalization", "LayerNormalization", 4, true);
    public static readonly SkipNormSplitter SimplifiedLayerNorm =
        new("SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization", 3, false);

    /// <summary>ONNX Runtime's default for both fused ops (kDefaultSkipLayerNormEpsilon); the plain norms default to 1e-5.</summary>
    private const float FusedDefaultEpsilon = 1e-12f;

    public bool Matches(NodeProto node) => node.OpType == FusedOp && node.Domain == "com.microsoft";

    /// <summary>
    /// The residual step at <paramref name="residual"/>: the one fused node adding a branch to it, split; null where
    /// nothing adds to it (the stream has ended). A plain Add reading it is refused: the graph is not fused this way.
    /// </summary>
    public ResidualStep? SplitStep(GraphEditor graph, string residual, string prefix, List<string> rewrites)
    {
        var readers = graph.Consumers(residual);
        var fused = readers.Where(n => Matches(n) && (n.Input[0] == residual || n.Input[1] == residual)).ToArray();
        if (fused.Length > 1)
            throw new InvalidDataException($"expected one {FusedOp} reading '{residual}'; "
                + $"found {ResidualStreamFamily.Describe(fused)}");
        if (fused.Length == 1)
            return Split(graph, fused[0], fused[0].Input[0] == residual ? 0 : 1, prefix, rewrites);
        if (readers.Any(n => n.OpType == "Add"))
            throw new InvalidDataException($"expected '{residual}' to be added to a branch by a "
                + $"com.microsoft.{FusedOp}; found {ResidualStreamFamily.Describe(readers)}");
        return null;
    }

    /// <summary>Splits <paramref name="node"/>, whose input <paramref name="residualInput"/> (0 or 1) is the residual stream.</summary>
    public ResidualStep Split(GraphEditor graph, NodeProto node, int residualInput, string prefix, List<string> rewrites)
    {
        var fused = ResidualStreamFamily.Describe(node);
        for (var o = 1; o <= 2 && o < node.Output.Count; o++)
            if (node.Output[o].Length > 0 && (graph.Consumers(node.Output[o]).Count > 0 || graph.IsGraphOutput(node.Output[o])))
                throw new InvalidDataException($"{fused}: output {o} ('{node.Output[o]}', a normalisation statistic) "
                    + $"is read; "
                    + "expected only the normalised value and the sum to be used");
        var residual = node.Input[residualInput];
        var input = node.Input[1 - residualInput];
        var bias = node.Input.Count > BiasInput && node.Input[BiasInput].Length > 0 ? node.Input[BiasInput] : null;
        var stem = $"{prefix}/{node.Name}";
        var normOutput = node.Output[0].Length > 0 ? node.Output[0] : null;
        var sum = node.Output.Count > 3 && node.Output[3].Length > 0 ? node.Output[3] : $"{stem}/sum";
        var epsilon = node.Attribute.FirstOrDefault(a => a.Name == "epsilon")?.F ?? FusedDefaultEpsilon;

        graph.RemoveNode(node);
        var branch = input;
        if (bias is not null)
        {
            branch = $"{stem}/branch";
            graph.AddNode("", "Add", $"{stem}/Add_bias", [input, bias], [branch]);
        }
        graph.AddNode("", "Add", $"{stem}/Add_residual", [residual, branch], [sum]);
        if (normOutput is not null)
        {
            string[] normInputs = HasBeta && node.Input.Count > 3 && node.Input[3].Length > 0
                ? [sum, node.Input[2], node.Input[3]]
                : [sum, node.Input[2]];
            graph.AddNode("", NormOp, $"{stem}/{NormOp}", normInputs, [normOutput], Attr.Int("axis", -1), Attr.Float("epsilon", epsilon));
        }
        rewrites.Add($"{fused} → Add{(bias is null ? "" : " (bias) + Add")} (residual) + {NormOp}");
        var add = $"residual Add '{stem}/Add_residual' (split from {fused})";
        return new ResidualStep(branch, sum, normOutput, $"input of {add}", $"output of {add}");
    }
}
