namespace FeatureFlow.Onnx.CustomOps;

/// <summary>
/// The contract of the <c>ai.featureflow</c> steering operators, shared by the exporter that writes their nodes and
/// the kernel that runs them. <see cref="OpType"/>: one node is one steering hook,
/// h ← h + add + Σ_k (α_k·a_k + β_k)·v_k with a_k = JumpReLU_θk(e_k·h + b_k), reading its site's slice straight out of
/// the four stacked steering inputs. <see cref="PairOpType"/>: one node is a sublayer's hook followed by the hook on
/// the residual stream that the sublayer's output joins.
/// </summary>
public static class SteeringHookOp
{
    /// <summary>The operator domain (a node in it needs this domain's opset import, version <see cref="DomainVersion"/>).
    /// </summary>
    public const string Domain = "ai.featureflow";
    public const long DomainVersion = 1;
    public const string OpType = "SteeringHook";

    /// <summary>
    /// Two hooks in one node, for a graph whose residual additions happen inside fused norms
    /// (SkipSimplifiedLayerNormalization). With h' = (h + add_s) + δ_s(h), the hook at <see cref="SiteAttribute"/> on
    /// the sublayer output h, and r = h' + residual, the stream before its hook at <see cref="ResidualSiteAttribute"/>,
    /// output 0 is (h' + add_r) + δ_r(r): fed to the norm as its input with <c>residual</c> as its skip, the norm's sum
    /// is the steered stream r + add_r + δ_r(r) (up to rounding order), and with all-zero steering output 0 is h's own
    /// bits, so the norm is exactly the one of the graph without hooks. Output 1 (optional) is h', the sublayer
    /// site's value, for graphs that expose it.
    /// </summary>
    public const string PairOpType = "SteeringHookPair";

    /// <summary>
    /// <see cref="OpType"/> and <see cref="PairOpType"/> followed by the SkipSimplifiedLayerNormalization their output
    /// feeds, in the same node: the hook's output goes in as the norm's input with <c>residual</c> as its skip
    /// (<see cref="ResidualInput"/>), γ at <see cref="GammaInput"/>, float attribute <see cref="EpsilonAttribute"/>.
    /// Outputs: the normalised value, the sum input + skip (the next residual stream; optional), and the sublayer site's
    /// value (optional). The norm is computed as ONNX Runtime's CPU kernel computes it (a float sum of squares in
    /// channel order, sqrt(ms / d + ε), then x / rms · γ), so zero steering gives that kernel's bits in the graph without
    /// hooks, which the engine's switching between graphs relies on; and a steered step saves the norm's node.
    /// </summary>
    public const string NormOpType = "SteeringHookNorm", PairNormOpType = "SteeringHookPairNorm";

    /// <summary>Float attribute of the norm operators: the norm's ε.</summary>
    public const string EpsilonAttribute = "epsilon";

    /// <summary>Inputs of the norm operators: the pair's six (SteeringHookNorm's residual is the norm's skip) and γ [d].
    /// </summary>
    public const int NormInputCount = 7, GammaInput = 6, NormOutputCount = 3;

    /// <summary>Int attribute: the site's index into the stacked inputs' site axis (Site.Index).</summary>
    public const string SiteAttribute = "site";

    /// <summary>
    /// Int attribute of <see cref="OpType"/>: 0 writes the steered value h + add + delta; 1 writes add + delta alone
    /// (broadcast to h's shape), for a graph that adds it to the residual stream inside a fused operator (as batched
    /// graphs exported before <see cref="PairOpType"/> do for resid_post).
    /// </summary>
    public const string IncrementAttribute = "increment";

    /// <summary>Int attribute of <see cref="PairOpType"/>: the residual stream site's index (Site.Index).</summary>
    public const string ResidualSiteAttribute = "residual_site";

    /// <summary>
    /// Inputs of <see cref="OpType"/>, in order: h [B, T, d], steering.add [B, S, d], steering.encoder [B, S, d, K],
    /// steering.decoder [B, S, K, d], steering.coefficients [B, S, <see cref="CoefficientRows"/>, K]; all float32.
    /// One output [B, T, d].
    /// </summary>
    public const int InputCount = 5;

    /// <summary>
    /// Inputs of <see cref="PairOpType"/>: the <see cref="InputCount"/> of <see cref="OpType"/>, then residual
    /// [B, T, d] at <see cref="ResidualInput"/>. Outputs: <see cref="PairOutputCount"/>, each [B, T, d], the second
    /// optional.
    /// </summary>
    public const int PairInputCount = 6, ResidualInput = 5, PairOutputCount = 2;

    /// <summary>Rows of steering.coefficients, in this order (the graph's GraphNames.CoefficientRow follows these).
    /// </summary>
    public const int EncoderBiasRow = 0, ThresholdRow = 1, AlphaRow = 2, BetaRow = 3, CoefficientRows = 4;
}
