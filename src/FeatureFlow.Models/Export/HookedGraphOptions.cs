using FeatureFlow.Onnx.CustomOps;

namespace FeatureFlow.Models.Export;

/// <summary>What the exporter puts around the model math.</summary>
public sealed record HookedGraphOptions
{
    /// <summary>Insert the steering hook at every site (false writes the plain graph, for comparison and GenAI).</summary>
    public bool Hooks { get; init; } = true;

    /// <summary>Feature slots per site: how many rescale/clamp terms one request can place at one site.</summary>
    public int SlotsPerSite { get; init; } = 8;

    /// <summary>Expose each site's (steered) value as a graph output named after the site, for read-out.</summary>
    public bool SiteOutputs { get; init; } = true;

    /// <summary>How the KV cache crosses the graph boundary; see <see cref="KvCacheLayout"/>.</summary>
    public KvCacheLayout KvLayout { get; init; } = KvCacheLayout.Concat;

    /// <summary>Which operators carry the model math (<see cref="OperatorSet"/>).</summary>
    public OperatorSet Operators { get; init; } = OperatorSet.Plain;

    /// <summary>How each steering hook is written (<see cref="HookOperators"/>).</summary>
    public HookOperators HookOperators { get; init; } = HookOperators.Onnx;

    /// <summary>For exporters without a fused variant: a request for one is refused, not silently ignored.</summary>
    public void RequirePlainOperators(string exporter)
    {
        if (Operators != OperatorSet.Plain)
            throw new ArgumentException($"the {exporter} exporter writes plain operators only; {nameof(Operators)} = "
                + $"{Operators} is not available for it");
    }
}

/// <summary>How a graph's steering hooks are written.</summary>
public enum HookOperators
{
    /// <summary>
    /// Eleven standard ONNX operators per hook over per-site slices of the steering inputs, cut once at the top of
    /// the graph: runs in any ONNX runtime (ONNX Runtime GenAI included); the reference form.
    /// </summary>
    Onnx,

    /// <summary>
    /// ai.featureflow custom operators (FeatureFlow.Onnx.CustomOps): a SteeringHook node per hook — in the fused Llama
    /// graph, with the norm after them, a SteeringHookNorm at attn_out and a SteeringHookPairNorm for each block's
    /// mlp_out and resid_post — reading their sites straight out of the
    /// stacked steering inputs: no slices, and on CPU a fraction of the eleven nodes' dispatch cost; its kernel skips
    /// the feature terms of rows whose α and β are all zero, so add-only steering costs little more than h + add.
    /// ONNX Runtime only, in sessions whose options went through FeatureFlowOps.Register; every exporter writes it,
    /// and the engine's batched graphs use it.
    /// </summary>
    CustomOperator,
}

/// <summary>The operators an exported graph is written in.</summary>
public enum OperatorSet
{
    /// <summary>
    /// Standard ONNX operators only (plus GroupQueryAttention for <see cref="KvCacheLayout.SharedBuffer"/>): the
    /// reference graph, which every other variant is tested against and into which the steering hooks go.
    /// </summary>
    Plain,

    /// <summary>
    /// ONNX Runtime's fused operators, as onnxruntime-genai's model builder writes a Llama: SimplifiedLayerNormalization
    /// and com.microsoft SkipSimplifiedLayerNormalization (the residual stream carried through its sum output),
    /// com.microsoft.RotaryEmbedding, one packed Q/K/V MatMul, and com.microsoft MultiHeadAttention (Concat) or
    /// GroupQueryAttention (SharedBuffer). Same inputs and outputs as the plain graph; ONNX Runtime only. The residual
    /// stream never exists as a separate value at a hook site, so hooks are refused here (the hook tool inserts them).
    /// </summary>
    Fused,
}

/// <summary>The two ways an exported graph keeps its KV cache.</summary>
public enum KvCacheLayout
{
    /// <summary>
    /// present = Concat(past, new) with plain operators: a fresh, one-longer tensor every step, and an
    /// attention_mask. Runs anywhere (ONNX Runtime GenAI included), but rows of one batch share one length:
    /// shorter ones need left padding and are then only close (not bit-identical) to the row alone.
    /// </summary>
    Concat,

    /// <summary>
    /// com.microsoft.GroupQueryAttention writes the new K/V in place into one preallocated
    /// [batch, kv_heads, max_sequence_length, head_size] buffer that the caller binds as both past and present
    /// (no copies, fixed shapes, 0 B allocated per step). Each row says its own length through seqlens_k, so rows
    /// of different lengths decode in one batch and each row's logits are bit-identical to that row run alone:
    /// the layout for continuous batching. GQA never reads a slot beyond seqlens_k, so a freed row's stale
    /// K/V need no clearing. A run with more than one new token per row (T &gt; 1) must either hold only fresh
    /// rows (past 0, right-padded) or be a single row continuing after its past (chunked prefill): ORT refuses
    /// T &gt; 1 with a past at batch &gt; 1, and when T == total_sequence_length it treats every row as fresh.
    /// </summary>
    SharedBuffer,
}

/// <summary>Names of the graph's inputs and outputs; Optimum/GenAI names so other runtimes can drive the plain graph.</summary>
public static class GraphNames
{
    public const string InputIds = "input_ids";
    public const string AttentionMask = "attention_mask";
    public const string PositionIds = "position_ids";
    /// <summary>SharedBuffer graphs, int32 [batch]: per row, past length + real new tokens − 1 (GQA's total − 1).
    /// </summary>
    public const string SeqlensK = "seqlens_k";
    /// <summary>SharedBuffer graphs, int32 scalar: the largest past length + real new tokens over the rows.</summary>
    public const string TotalSequenceLength = "total_sequence_length";
    public const string Logits = "logits";
    public const string SteeringAdd = "steering.add";
    public const string SteeringEncoder = "steering.encoder";
    public const string SteeringDecoder = "steering.decoder";
    public const string SteeringCoefficients = "steering.coefficients";

    public static string PastKey(int layer) => $"past_key_values.{layer}.key";
    public static string PastValue(int layer) => $"past_key_values.{layer}.value";
    public static string PresentKey(int layer) => $"present.{layer}.key";
    public static string PresentValue(int layer) => $"present.{layer}.value";

    /// <summary>Rows of <see cref="SteeringCoefficients"/> ([batch, site, row, slot]), as the custom operator reads them.
    /// </summary>
    public enum CoefficientRow
    {
        EncoderBias = SteeringHookOp.EncoderBiasRow,
        Threshold = SteeringHookOp.ThresholdRow,
        Alpha = SteeringHookOp.AlphaRow,
        Beta = SteeringHookOp.BetaRow,
    }

    public const int CoefficientRows = SteeringHookOp.CoefficientRows;
}
