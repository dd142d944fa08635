namespace FeatureFlow.Onnx.CustomOps;

/// <summary>
/// The contract of the <c>ai.featureflow</c> steering operators, shared by the exporter that writes their nodes and
/// the kernel that runs them. <see cref="OpType"/>: one node is one steering hook,
/// h ← h + add + Σ_k (α_k·a_k + β_k)·v_k with a_k = JumpReLU_θk(e_k·h + b_k), reading its site's slice straight out of
/// the four stacked steering inputs. <see cref="NormOpType"/> and <see cref="PairNormOpType"/>: hooks together with
/// the norm their output feeds, for graphs whose residual additions happen inside fused norms.
/// </summary>
public static class SteeringHookOp
{
    /// <summary>The operator domain (a node in it needs this domain's opset import, version <see cref="DomainVersion"/>).
    /// </summary>
    public const string Domain = "ai.featureflow";
    public const long DomainVersion = 1;
    public const string OpType = "SteeringHook";

    /// <summary>
    /// A hook followed by the SkipSimplifiedLayerNormalization its output feeds, in one node that takes the norm's
    /// place: the hook's output goes in as the norm's input with <c>residual</c> as its skip (<see cref="ResidualInput"/>),
    /// γ at <see cref="GammaInput"/>, float attribute <see cref="EpsilonAttribute"/>. Outputs: the normalised value, the
    /// sum input + skip (the next residual stream; optional), and the hooked site's value (optional). The norm is
    /// computed as ONNX Runtime's CPU kernel computes it (a float sum of squares in channel order, sqrt(ms / d + ε), then
    /// x / rms · γ), so zero steering gives that kernel's bits in the graph without hooks, which the engine's switching
    /// between graphs relies on.
    /// </summary>
    /// <remarks>
    /// <see cref="NormOpType"/>: the norm's input is h' = (h + add_s) + δ_s(h), the hook at <see cref="SiteAttribute"/>.
    /// <see cref="PairNormOpType"/>: two hooks, for a sublayer output h and the residual stream it joins; with h' as
    /// above and r = h' + residual, the stream before its hook at <see cref="ResidualSiteAttribute"/>, the norm's input
    /// is (h' + add_r) + δ_r(r), so the norm's sum is the steered stream r + add_r + δ_r(r) (up to rounding order).
    /// </remarks>
    public const string NormOpType = "SteeringHookNorm", PairNormOpType = "SteeringHookPairNorm";

    /// <summary>Float attribute of the norm operators: the norm's ε.</summary>
    public const string EpsilonAttribute = "epsilon";

    /// <summary>Int attribute: the site's index into the stacked inputs' site axis (Site.Index).</summary>
    public const string SiteAttribute = "site";

    /// <summary>Int attribute of <see cref="PairNormOpType"/>: the residual stream site's index (Site.Index).</summary>
    public const string ResidualSiteAttribute = "residual_site";

    /// <summary>
    /// Inputs of <see cref="OpType"/>, in order: h [B, T, d], steering.add [B, S, d], steering.encoder [B, S, d, K],
    /// steering.decoder [B, S, K, d], steering.coefficients [B, S, <see cref="CoefficientRows"/>, K]; all float32.
    /// One output [B, T, d].
    /// </summary>
    public const int InputCount = 5;

    /// <summary>
    /// Inputs of the norm operators: the <see cref="InputCount"/> of <see cref="OpType"/>, then residual [B, T, d] (the
    /// norm's skip) and γ [d]. Outputs: <see cref="NormOutputCount"/>, each [B, T, d], all but the first optional.
    /// </summary>
    public const int NormInputCount = 7, ResidualInput = 5, GammaInput = 6, NormOutputCount = 3;

    /// <summary>Rows of steering.coefficients, in this order (the graph's GraphNames.CoefficientRow follows these).
    /// </summary>
    public const int EncoderBiasRow = 0, ThresholdRow = 1, AlphaRow = 2, BetaRow = 3, CoefficientRows = 4;
}
