using FeatureFlow.Onnx;
using FeatureFlow.Onnx.CustomOps;
using FeatureFlow.Onnx.Ir;
using DataType = FeatureFlow.Onnx.Ir.TensorProto.Types.DataType;

namespace FeatureFlow.Models.Export;

/// <summary>
/// The steering interface every hooked graph shares, whether we exported it or inserted it into someone else's
/// graph: the four stacked inputs (<see cref="GraphNames.SteeringAdd"/> [B, sites, d],
/// <see cref="GraphNames.SteeringEncoder"/> [B, sites, d, K], <see cref="GraphNames.SteeringDecoder"/> [B, sites, K, d],
/// <see cref="GraphNames.SteeringCoefficients"/> [B, sites, 4, K]) cut once at the top of the graph, and the hook
/// h ← h + add + Σ_k (α_k·a_k(h) + β_k)·v_k with a_k(h) = JumpReLU_θk(e_k·h + b_k) at one site; every steering
/// input zero makes it the exact identity. The hook is eleven ONNX operators, or (<see cref="HookOperators"/>) one
/// ai.featureflow.SteeringHook node that reads its site out of the uncut inputs (with <see cref="ApplyWithNorm"/>, one
/// node for a sublayer's hook, the residual stream's after it and the norm they feed).
/// </summary>
public static class SteeringHook
{
    private const string B = "batch", T = "sequence_length";

    /// <summary>
    /// Declares the four steering inputs (float32) and splits them into per-site pieces (for
    /// <see cref="HookOperators.CustomOperator"/> hooks, which read the stacked inputs, it splits nothing);
    /// <paramref name="opset"/> is the graph's ai.onnx opset (from 18 on, Split must be told its number of outputs).
    /// </summary>
    public static SiteSlices DeclareInputs(GraphBuilder g, int sites, int d, int slots, long opset = 17,
        HookOperators form = HookOperators.Onnx)
    {
        var add = g.Input(GraphNames.SteeringAdd, DataType.Float, B, sites, d);
        var encoder = g.Input(GraphNames.SteeringEncoder, DataType.Float, B, sites, d, slots);
        var decoder = g.Input(GraphNames.SteeringDecoder, DataType.Float, B, sites, slots, d);
        var coefficients = g.Input(GraphNames.SteeringCoefficients, DataType.Float, B, sites,
            GraphNames.CoefficientRows, slots);
        return form == HookOperators.CustomOperator
            ? SiteSlices.Unsplit(new StackedSteering(add, encoder, decoder, coefficients))
            : SiteSlices.Split(g, sites, opset, add, encoder, decoder, coefficients);
    }

    /// <summary>
    /// The hook at <paramref name="site"/> on the float32 value <paramref name="h"/> [B, T, d]; returns the steered
    /// value (named after the site and declared a graph output when <paramref name="siteOutput"/>), or
    /// <paramref name="h"/> itself when the graph has no steering.
    /// </summary>
    public static string Apply(GraphBuilder g, SiteSlices? steering, Site site, string h, bool siteOutput, int d)
    {
        if (steering is null) return h;
        using var _ = g.Scope(Site.HookSuffix(site.Kind));
        if (steering.Stacked is { } stacked)
        {
            var hooked = CustomHook(g, stacked, site, h, siteOutput ? site.HookName : null);
            return siteOutput ? g.Output(hooked, site.HookName, DataType.Float, B, T, d) : hooked;
        }
        var delta = Delta(g, steering, site, h);
        var shifted = g.Op("Add", [h, steering.Add[site.Index]]);
        if (!siteOutput) return g.Op("Add", [shifted, delta]);
        // The steered value carries the site's name itself, so the output costs no Identity node per step.
        var steered = g.Node("Add", [shifted, delta], [site.HookName])[0];
        return g.Output(steered, site.HookName, DataType.Float, B, T, d);
    }

    /// <summary>
    /// What the hook at <paramref name="site"/> adds to <paramref name="h"/>: add + Σ_k (α_k·a_k(h) + β_k)·v_k, for a
    /// graph that adds it to the residual stream inside a fused operator (SkipSimplifiedLayerNormalization). All-zero
    /// steering makes it +0, and h + 0 is h's own bits.
    /// </summary>
    /// <remarks>For hooks in ONNX operators; custom-operator graphs use <see cref="ApplyWithNorm"/>.</remarks>
    public static string Increment(GraphBuilder g, SiteSlices steering, Site site, string h)
    {
        using var _ = g.Scope(Site.HookSuffix(site.Kind));
        var delta = Delta(g, steering, site, h);
        return g.Op("Add", [steering.Add[site.Index], delta]);
    }

    /// <summary>
    /// The hook at <paramref name="site"/> on a sublayer's output <paramref name="h"/> — and with
    /// <paramref name="streamSite"/> the hook there on the residual stream h' + <paramref name="residual"/> — followed
    /// by the SkipSimplifiedLayerNormalization that output feeds (skip <paramref name="residual"/>, γ
    /// <paramref name="gamma"/>), as one node (<see cref="SteeringHookOp.NormOpType"/> or
    /// <see cref="SteeringHookOp.PairNormOpType"/>). Returns the normalised value ({norm}/normed) and the sum, the next
    /// residual stream ({norm}/residual, or <paramref name="sumName"/>; none without <paramref name="withSum"/>). With
    /// <paramref name="siteOutput"/> h' is a graph output named after <paramref name="site"/>; the stream site's value
    /// is the sum, which the caller declares.
    /// </summary>
    public static (string Normed, string Sum) ApplyWithNorm(GraphBuilder g, StackedSteering stacked, Site site,
        Site? streamSite, string h, string residual, string norm, string gamma, float epsilon, bool withSum,
        string? sumName, bool siteOutput, int d)
    {
        using var _ = g.Scope(Site.HookSuffix(site.Kind));
        List<AttributeProto> attributes =
        [
            Attr.Int(SteeringHookOp.SiteAttribute, site.Index),
            Attr.Float(SteeringHookOp.EpsilonAttribute, epsilon),
        ];
        if (streamSite is { } stream) attributes.Add(Attr.Int(SteeringHookOp.ResidualSiteAttribute, stream.Index));
        var written = g.DomainNode(SteeringHookOp.Domain,
            streamSite is null ? SteeringHookOp.NormOpType : SteeringHookOp.PairNormOpType,
            [h, stacked.Add, stacked.Encoder, stacked.Decoder, stacked.Coefficients, residual, gamma],
            [$"{norm}/normed", withSum ? sumName ?? $"{norm}/residual" : "", siteOutput ? site.HookName : ""],
            [.. attributes]);
        if (siteOutput) g.Output(written[2], site.HookName, DataType.Float, B, T, d);
        return (written[0], written[1]);
    }

    /// <summary>
    /// One <see cref="SteeringHookOp"/> node: the steered h, its output named <paramref name="output"/> or generated.
    /// </summary>
    private static string CustomHook(GraphBuilder g, StackedSteering stacked, Site site, string h, string? output)
    {
        string[] inputs = [h, stacked.Add, stacked.Encoder, stacked.Decoder, stacked.Coefficients];
        AttributeProto[] attributes = [Attr.Int(SteeringHookOp.SiteAttribute, site.Index)];
        return output is null
            ? g.DomainOp(SteeringHookOp.Domain, SteeringHookOp.OpType, inputs, attributes)
            : g.DomainNode(SteeringHookOp.Domain, SteeringHookOp.OpType, inputs, [output], attributes)[0];
    }

    /// <summary>Σ_k (α_k·a_k(h) + β_k)·v_k with a_k(h) = JumpReLU_θk(e_k·h + b_k), [B, T, d].</summary>
    private static string Delta(GraphBuilder g, SiteSlices steering, Site site, string h)
    {
        var i = site.Index;
        string Row(GraphNames.CoefficientRow row) => steering.Rows[(int)row][i];
        // A singleton site axis, so that per-row [B, 1, …] steering tensors broadcast over the tokens.
        var siteAxis = g.ConstInt64(1);
        var h4 = g.Op("Unsqueeze", [h, siteAxis]);                                                        // [B, 1, T, d]
        var pre = g.Op("Add", [g.Op("MatMul", [h4, steering.Encoder[i]]), Row(GraphNames.CoefficientRow.EncoderBias)]); // [B, 1, T, K]
        var activation = g.Op("Where", [g.Op("Greater", [pre, Row(GraphNames.CoefficientRow.Threshold)]), pre, g.ScalarFloat(0f)]);
        var coefficient = g.Op("Add", [g.Op("Mul", [Row(GraphNames.CoefficientRow.Alpha), activation]), Row(GraphNames.CoefficientRow.Beta)]);
        return g.Op("Squeeze", [g.Op("MatMul", [coefficient, steering.Decoder[i]]), siteAxis]);   // [B, T, d]
    }
}

/// <summary>
/// The steering inputs cut into per-site pieces once, at the top of the graph, so each hook costs no
/// gathers: add [B, 1, d], encoder [B, 1, d, K], decoder [B, 1, K, d], coefficient rows [B, 1, 1, K]. Custom-operator
/// hooks need no pieces: their slices are empty and <see cref="Stacked"/> names the inputs each node reads its site of.
/// </summary>
public sealed record SiteSlices(string[] Add, string[] Encoder, string[] Decoder, string[][] Rows)
{
    /// <summary>The four stacked inputs, for <see cref="HookOperators.CustomOperator"/> hooks; null otherwise.</summary>
    public StackedSteering? Stacked { get; init; }

    public static SiteSlices Unsplit(StackedSteering stacked) => new([], [], [], []) { Stacked = stacked };

    public static SiteSlices Split(GraphBuilder g, int sites, long opset, string add, string encoder, string decoder,
        string coefficients)
    {
        using var _ = g.Scope("steering");
        string[] Pieces(string value, int count, int axis) => opset >= 18
            ? g.Op("Split", [value], count, Attr.Int("axis", axis), Attr.Int("num_outputs", count))
            : g.Op("Split", [value], count, Attr.Int("axis", axis));
        var rows = Pieces(coefficients, GraphNames.CoefficientRows, 2);
        return new SiteSlices(
            Pieces(add, sites, 1),
            Pieces(encoder, sites, 1),
            Pieces(decoder, sites, 1),
            rows.Select(r => Pieces(r, sites, 1)).ToArray());
    }
}

/// <summary>The graph inputs steering.add, steering.encoder, steering.decoder and steering.coefficients, uncut.</summary>
public sealed record StackedSteering(string Add, string Encoder, string Decoder, string Coefficients);
