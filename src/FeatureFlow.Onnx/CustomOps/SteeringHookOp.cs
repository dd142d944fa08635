namespace FeatureFlow.Onnx.CustomOps;

/// <summary>
/// The contract of the <c>ai.featureflow.SteeringHook</c> operator, shared by the exporter that writes its nodes and
/// the kernel that runs them: one node is one steering hook, h ← h + add + Σ_k (α_k·a_k + β_k)·v_k with
/// a_k = JumpReLU_θk(e_k·h + b_k), reading its site's slice straight out of the four stacked steering inputs.
/// </summary>
public static class SteeringHookOp
{
    /// <summary>The operator domain (a node in it needs this domain's opset import, version <see cref="DomainVersion"/>).
    /// </summary>
    public const string Domain = "ai.featureflow";
    public const long DomainVersion = 1;
    public const string OpType = "SteeringHook";

    /// <summary>Int attribute: the site's index into the stacked inputs' site axis (Site.Index).</summary>
    public const string SiteAttribute = "site";

    /// <summary>
    /// Int attribute: 0 writes the steered value h + add + delta; 1 writes add + delta alone (broadcast to h's
    /// shape), for a graph that adds it to the residual stream inside a fused operator.
    /// </summary>
    public const string IncrementAttribute = "increment";

    /// <summary>
    /// Inputs, in order: h [B, T, d], steering.add [B, S, d], steering.encoder [B, S, d, K], steering.decoder
    /// [B, S, K, d], steering.coefficients [B, S, <see cref="CoefficientRows"/>, K]; all float32. One output [B, T, d].
    /// </summary>
    public const int InputCount = 5;

    /// <summary>Rows of steering.coefficients, in this order (the graph's GraphNames.CoefficientRow follows these).
    /// </summary>
    public const int EncoderBiasRow = 0, ThresholdRow = 1, AlphaRow = 2, BetaRow = 3, CoefficientRows = 4;
}
