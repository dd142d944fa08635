using FeatureFlow.Onnx;
using FeatureFlow.Onnx.CustomOps;
using FeatureFlow.Onnx.Ir;
using DataType = FeatureFlow.Onnx.Ir.TensorProto.Types.DataType;

namespace FeatureFlow.Models.Export;

/// <summary>
/// Writes a Llama-family decoder (RMSNorm, grouped-query attention with rotary embedding, SwiGLU MLP)
/// as an ONNX graph with a KV cache, and optionally a steering hook at every
/// <c>blocks.L.hook_attn_out|hook_mlp_out|hook_resid_post</c> site. Each hook computes, per batch row,
/// h ← h + add + Σ_k (α_k·a_k(h) + β_k)·v_k with a_k(h) = JumpReLU_θk(e_k·h + b_k); every steering input
/// zero makes it the exact identity. The KV cache is either concatenated (past → present, one longer) or one
/// shared buffer written in place by com.microsoft.GroupQueryAttention (<see cref="KvCacheLayout"/>).
/// </summary>
public static partial class LlamaGraphExporter
{
    internal const string B = "batch", T = "sequence_length", P = "past_sequence_length", S = "total_sequence_length";
    internal const string M = "max_sequence_length";
    internal const string MicrosoftDomain = "com.microsoft";

    /// <param name="externalData">The folder's shared weights file; null writes every initializer inline.</param>
    public static ModelProto Export(ModelArchitecture arch, LlamaWeights w, HookedGraphOptions options, string modelName,
        ExternalDataFile? externalData = null)
    {
        RequireWritable(arch);
        var g = new GraphBuilder(modelName, externalData);
        var inputs = DeclareInputs(g, arch, options);
        var (steering, pastKeys, pastValues) = (inputs.Steering, inputs.PastKeys, inputs.PastValues);
        int d = arch.DModel;

        var embedding = g.Initializer("model.embed_tokens.weight", w.TokenEmbedding, arch.VocabSize, d);
        var x = g.Op("Gather", [embedding, inputs.InputIds], Attr.Int("axis", 0));
        if (options.Operators == OperatorSet.Fused) return FusedDecoder(g, arch, w, options, embedding, x, inputs);
        var (cos, sin) = RotaryTables(g, arch, inputs.PositionIds);
        var cache = inputs.Cache(g);

        for (var l = 0; l < arch.Layers; l++)
        {
            using var _ = g.Scope($"blocks.{l}");
            var xn = RmsNorm(g, x, g.Initializer($"blocks.{l}.ln_1.weight", w.RmsAttention[l], d), arch.NormEpsilon);
            var attn = Attention(g, arch, l, w, xn, cos, sin, cache, pastKeys[l], pastValues[l]);
            attn = SteeringHook.Apply(g, steering, new Site(l, SiteKind.AttnOut), attn, options.SiteOutputs, d);
            x = g.Op("Add", [x, attn]);
            xn = RmsNorm(g, x, g.Initializer($"blocks.{l}.ln_2.weight", w.RmsFfn[l], d), arch.NormEpsilon);
            var mlp = SwiGlu(g, arch, l, w, xn);
            mlp = SteeringHook.Apply(g, steering, new Site(l, SiteKind.MlpOut), mlp, options.SiteOutputs, d);
            x = g.Op("Add", [x, mlp]);
            x = SteeringHook.Apply(g, steering, new Site(l, SiteKind.ResidPost), x, options.SiteOutputs, d);
        }

        x = RmsNorm(g, x, g.Initializer("ln_f.weight", w.RmsFinal, d), arch.NormEpsilon);
        var classifier = arch.TiedEmbeddings ? embedding : g.Initializer("lm_head.weight", w.Classifier, arch.VocabSize, d);
        var logits = g.Op("MatMul", [x, g.Op("Transpose", [classifier], Attr.Ints("perm", 1, 0))]);
        return Build(g, arch, options, logits, "Llama");
    }

    /// <summary>The layout this exporter writes; other architectures are refused by name, not written wrongly.</summary>
    private static void RequireWritable(ModelArchitecture arch)
    {
        arch.Validate();
        if (arch.Norm != NormKind.RmsNorm || arch.Mlp != MlpKind.SwiGlu || arch.Positions != PositionEmbedding.Rotary
            || arch.Rotary != RotaryConvention.Interleaved)
            throw new InvalidDataException($"the Llama exporter writes rms_norm, swi_glu, rotary (interleaved) models; "
                + $"{arch.Family} is {arch.Norm}, {arch.Mlp}, {arch.Positions} ({arch.Rotary})");
    }

    internal static string RmsNorm(GraphBuilder g, string x, string weight, float eps)
    {
        var meanSquare = g.Op("ReduceMean", [g.Op("Mul", [x, x])], Attr.Ints("axes", -1), Attr.Int("keepdims", 1));
        var inv = g.Op("Reciprocal", [g.Op("Sqrt", [g.Op("Add", [meanSquare, g.ScalarFloat(eps)])])]);
        return g.Op("Mul", [weight, g.Op("Mul", [inv, x])]);
    }

    /// <summary>cos/sin of position·freq per rotary pair, shaped [B, T, 1, head_size/2, 1] to broadcast over heads.</summary>
    private static (string Cos, string Sin) RotaryTables(GraphBuilder g, ModelArchitecture arch, string positionIds)
    {
        using var _ = g.Scope("rotary");
        var half = arch.HeadSize / 2;
        var freqs = RotaryFrequencies.Inverse(arch);
        var pos = g.Op("Unsqueeze", [g.Op("Cast", [positionIds], Attr.Int("to", (long)DataType.Float)), g.ConstInt64(-1)]);
        var angles = g.Op("Mul", [pos, g.Initializer("rotary.inv_freq", freqs, half)]);
        var axes = g.ConstInt64(2, 4);
        return (g.Op("Unsqueeze", [g.Op("Cos", [angles]), axes]), g.Op("Unsqueeze", [g.Op("Sin", [angles]), axes]));
    }

    /// <summary>
    /// Which keys each query may see: causal over absolute positions (past tokens come first) and not
    /// masked out by attention_mask; with <paramref name="slidingWindow"/>, also the same restricted to
    /// query − key &lt; window (Gemma 2's sliding layers). Shape [B, 1, 1, T, S], matching the grouped score layout.
    /// </summary>
    internal static (string Allowed, string? Sliding) AttentionAllowed(GraphBuilder g, string inputIds,
        string attentionMask, int? slidingWindow = null)
    {
        using var _ = g.Scope("mask");
        var zero = g.ScalarInt64(0);
        var one = g.ScalarInt64(1);
        var total = g.Op("Gather", [g.Op("Shape", [attentionMask]), one], Attr.Int("axis", 0));
        var current = g.Op("Gather", [g.Op("Shape", [inputIds]), one], Attr.Int("axis", 0));
        var past = g.Op("Sub", [total, current]);
        var keyPositions = g.Op("Unsqueeze", [g.Op("Range", [zero, total, one]), g.ConstInt64(0)]);
        var queryPositions = g.Op("Unsqueeze", [g.Op("Range", [past, total, one]), g.ConstInt64(1)]);
        var causal = g.Op("LessOrEqual", [keyPositions, queryPositions]);
        var notPadding = g.Op("Unsqueeze", [g.Op("Cast", [attentionMask], Attr.Int("to", (long)DataType.Bool)), g.ConstInt64(1, 2, 3)]);
        var allowed = g.Op("And", [causal, notPadding]);
        if (slidingWindow is not { } window) return (allowed, null);
        var inWindow = g.Op("Less", [g.Op("Sub", [queryPositions, keyPositions]), g.ScalarInt64(window)]);
        return (allowed, g.Op("And", [allowed, inWindow]));
    }

    /// <summary>
    /// What attention reads besides q, k, v and the past: the Concat layout's mask ([B, 1, 1, T, S]), or the
    /// SharedBuffer layout's per-row lengths (seqlens_k, total_sequence_length).
    /// </summary>
    internal sealed record KvCache(KvCacheLayout Layout, string? Allowed, string? SeqlensK, string? TotalLength);

    private static string Attention(GraphBuilder g, ModelArchitecture arch, int l, LlamaWeights w, string xn,
        string cos, string sin, KvCache cache, string pastKey, string pastValue)
    {
        using var _ = g.Scope("attn");
        int d = arch.DModel, hs = arch.HeadSize, kv = arch.KvHeads;
        var q = g.Op("Reshape", [Linear(g, xn, $"blocks.{l}.attn.W_Q", w.Wq[l], d, d), g.ConstInt64(0, 0, arch.Heads, hs)]);
        var key = g.Op("Reshape", [Linear(g, xn, $"blocks.{l}.attn.W_K", w.Wk[l], arch.KvDim, d), g.ConstInt64(0, 0, kv, hs)]);
        var value = g.Op("Reshape", [Linear(g, xn, $"blocks.{l}.attn.W_V", w.Wv[l], arch.KvDim, d), g.ConstInt64(0, 0, kv, hs)]);
        q = Rotate(g, q, hs, cos, sin);
        key = Rotate(g, key, hs, cos, sin);
        var context = cache.Layout == KvCacheLayout.SharedBuffer
            ? SharedBufferAttention(g, arch, l, q, key, value, cache, pastKey, pastValue)
            : ConcatAttention(g, arch, l, q, key, value, cache.Allowed!, pastKey, pastValue);
        return Linear(g, context, $"blocks.{l}.attn.W_O", w.Wo[l], d, d);
    }

    /// <summary>Causal attention over Concat(past, new) with plain operators; q, key, value: [B, T, heads, hs].</summary>
    internal static string ConcatAttention(GraphBuilder g, ModelArchitecture arch, int l, string q, string key,
        string value, string allowed, string pastKey, string pastValue)
    {
        int d = arch.DModel, hs = arch.HeadSize, kv = arch.KvHeads;
        var toHeadMajor = Attr.Ints("perm", 0, 2, 1, 3);
        var presentKey = g.Node("Concat", [pastKey, g.Op("Transpose", [key], toHeadMajor)], [GraphNames.PresentKey(l)], Attr.Int("axis", 2))[0];
        var presentValue = g.Node("Concat", [pastValue, g.Op("Transpose", [value], toHeadMajor)], [GraphNames.PresentValue(l)], Attr.Int("axis", 2))[0];
        g.Output(presentKey, presentKey, DataType.Float, B, kv, S, hs);
        g.Output(presentValue, presentValue, DataType.Float, B, kv, S, hs);

        // Grouped-query attention without copying K/V: query head h = kv_head·group + j reads kv_head,
        // so queries are viewed as [B, kv, group, T, hs] and K/V as [B, kv, 1, S, hs] for a broadcast MatMul.
        var groupedQ = g.Op("Reshape", [g.Op("Transpose", [q], toHeadMajor), g.ConstInt64(0, kv, arch.QueriesPerKvHead, -1, hs)]);
        var groupAxis = g.ConstInt64(2);
        var keysT = g.Op("Transpose", [g.Op("Unsqueeze", [presentKey, groupAxis])], Attr.Ints("perm", 0, 1, 2, 4, 3));
        var scores = g.Op("Div", [g.Op("MatMul", [groupedQ, keysT]), g.ScalarFloat(MathF.Sqrt(hs))]);
        scores = g.Op("Where", [allowed, scores, g.ScalarFloat(float.MinValue)]);
        var probs = g.Op("Softmax", [scores], Attr.Int("axis", -1));
        var context = g.Op("MatMul", [probs, g.Op("Unsqueeze", [presentValue, groupAxis])]);
        context = g.Op("Reshape", [context, g.ConstInt64(0, arch.Heads, -1, hs)]);
        return g.Op("Reshape", [g.Op("Transpose", [context], toHeadMajor), g.ConstInt64(0, 0, d)]);
    }

    /// <summary>
    /// One com.microsoft.GroupQueryAttention node over the already rotated q, key, value ([B, T, heads, hs] →
    /// [B, T, heads·hs]); GQA's own do_rotary needs head_size % 16 == 0, which stories260K (8) is not. It writes the
    /// new K/V into past_key/past_value's buffer at rows seqlens_k − T + 1 … seqlens_k and attends to positions
    /// 0 … seqlens_k only, so a caller that binds one buffer as past and present never copies the cache and stale
    /// slots beyond a row's length are never read. Its default scale is 1/√hs, the reference's.
    /// </summary>
    internal static string SharedBufferAttention(GraphBuilder g, ModelArchitecture arch, int l, string q, string key,
        string value, KvCache cache, string pastKey, string pastValue)
    {
        var flat = g.ConstInt64(0, 0, -1);
        var outputs = g.DomainNode(MicrosoftDomain, "GroupQueryAttention",
            [g.Op("Reshape", [q, flat]), g.Op("Reshape", [key, flat]), g.Op("Reshape", [value, flat]),
                pastKey, pastValue, cache.SeqlensK!, cache.TotalLength!],
            [$"blocks.{l}/attn/context", GraphNames.PresentKey(l), GraphNames.PresentValue(l)],
            Attr.Int("num_heads", arch.Heads), Attr.Int("kv_num_heads", arch.KvHeads));
        g.Output(outputs[1], outputs[1], DataType.Float, B, arch.KvHeads, M, arch.HeadSize);
        g.Output(outputs[2], outputs[2], DataType.Float, B, arch.KvHeads, M, arch.HeadSize);
        return outputs[0];
    }

    /// <summary>Rotates interleaved channel pairs (2i, 2i+1) of [B, T, heads, hs] by the position's angle.</summary>
    private static string Rotate(GraphBuilder g, string t, int hs, string cos, string sin)
    {
        var pairs = g.Op("Reshape", [t, g.ConstInt64(0, 0, 0, hs / 2, 2)]);
        var parts = g.Op("Split", [pairs], 2, Attr.Int("axis", -1));
        var even = g.Op("Sub", [g.Op("Mul", [parts[0], cos]), g.Op("Mul", [parts[1], sin])]);
        var odd = g.Op("Add", [g.Op("Mul", [parts[0], sin]), g.Op("Mul", [parts[1], cos])]);
        return g.Op("Reshape", [g.Op("Concat", [even, odd], Attr.Int("axis", -1)), g.ConstInt64(0, 0, 0, hs)]);
    }

    private static string SwiGlu(GraphBuilder g, ModelArchitecture arch, int l, LlamaWeights w, string xn)
    {
        using var _ = g.Scope("mlp");
        int d = arch.DModel, h = arch.HiddenDim;
        var gate = Linear(g, xn, $"blocks.{l}.mlp.W_gate", w.W1[l], h, d);
        var up = Linear(g, xn, $"blocks.{l}.mlp.W_in", w.W3[l], h, d);
        var act = g.Op("Mul", [g.Op("Mul", [gate, g.Op("Sigmoid", [gate])]), up]);
        return Linear(g, act, $"blocks.{l}.mlp.W_out", w.W2[l], d, h);
    }

    /// <summary>y = x·Wᵀ for W stored [out][in]; the initializer holds Wᵀ so MatMul needs no transpose at run time.</summary>
    internal static string Linear(GraphBuilder g, string x, string name, float[] weight, int outDim, int inDim) =>
        g.Op("MatMul", [x, g.Initializer(name, Matrix.Transpose(weight, outDim, inDim), inDim, outDim)]);

    /// <summary>The graph inputs every decoder variant shares, with the steering inputs already cut per site.</summary>
    internal sealed record DecoderInputs(string InputIds, string? AttentionMask, string PositionIds, string? SeqlensK,
        string? TotalLength, string[] PastKeys, string[] PastValues, SiteSlices? Steering)
    {
        /// <summary>What attention reads besides q, k, v (the Concat layout's mask is built here, where it is called).
        /// </summary>
        public KvCache Cache(GraphBuilder g) => AttentionMask is null
            ? new KvCache(KvCacheLayout.SharedBuffer, null, SeqlensK, TotalLength)
            : new KvCache(KvCacheLayout.Concat, AttentionAllowed(g, InputIds, AttentionMask).Allowed, null, null);
    }

    internal static DecoderInputs DeclareInputs(GraphBuilder g, ModelArchitecture arch, HookedGraphOptions options)
    {
        if (options.Hooks && options.SlotsPerSite < 1) throw new ArgumentException("slots per site must be at least 1");
        int d = arch.DModel, hs = arch.HeadSize, kvHeads = arch.KvHeads, sites = arch.Layers * Site.KindsPerLayer;
        int k = options.SlotsPerSite;
        var shared = options.KvLayout == KvCacheLayout.SharedBuffer;

        var inputIds = g.Input(GraphNames.InputIds, DataType.Int64, B, T);
        var attentionMask = shared ? null : g.Input(GraphNames.AttentionMask, DataType.Int64, B, S);
        var positionIds = g.Input(GraphNames.PositionIds, DataType.Int64, B, T);
        var seqlensK = shared ? g.Input(GraphNames.SeqlensK, DataType.Int32, B) : null;
        var totalLength = shared ? g.Input(GraphNames.TotalSequenceLength, DataType.Int32) : null;
        var pastKeys = new string[arch.Layers];
        var pastValues = new string[arch.Layers];
        for (var l = 0; l < arch.Layers; l++)
        {
            pastKeys[l] = g.Input(GraphNames.PastKey(l), DataType.Float, B, kvHeads, shared ? M : P, hs);
            pastValues[l] = g.Input(GraphNames.PastValue(l), DataType.Float, B, kvHeads, shared ? M : P, hs);
        }
        var steering = options.Hooks ? SteeringHook.DeclareInputs(g, sites, d, k, form: options.HookOperators) : null;
        return new DecoderInputs(inputIds, attentionMask, positionIds, seqlensK, totalLength, pastKeys, pastValues,
            steering);
    }

    /// <summary>Declares the logits output and builds the model with the metadata the engine reads.</summary>
    internal static ModelProto Build(GraphBuilder g, ModelArchitecture arch, HookedGraphOptions options, string logits,
        string family)
    {
        g.Output(logits, GraphNames.Logits, DataType.Float, B, T, arch.VocabSize);
        return BuildPlain(g, options, options.Hooks
            ? $"{family} decoder with FeatureFlow steering hooks at every attn_out, mlp_out and resid_post site."
            : $"{family} decoder (no hooks).");
    }

    /// <summary>
    /// Builds a plain-operator graph with the metadata the engine reads, its doc string opened by
    /// <paramref name="description"/>; what the KV layout and the hook form add is declared here, once for every
    /// exporter.
    /// </summary>
    internal static ModelProto BuildPlain(GraphBuilder g, HookedGraphOptions options, string description)
    {
        var shared = options.KvLayout == KvCacheLayout.SharedBuffer;
        var customHooks = options is { Hooks: true, HookOperators: HookOperators.CustomOperator };
        var doc = description;
        List<KeyValuePair<string, string>> metadata =
        [
            new("featureflow.hooks", options.Hooks ? "true" : "false"),
            new("featureflow.slots_per_site",
                options.Hooks ? options.SlotsPerSite.ToString(System.Globalization.CultureInfo.InvariantCulture) : "0"),
        ];
        List<KeyValuePair<string, long>> opsets = shared ? [new(MicrosoftDomain, 1)] : [];
        // Only the batched graphs' layout and hook form add anything, so Concat graphs keep their committed bytes.
        if (customHooks)
        {
            doc += $" Each steering hook is one {SteeringHookOp.Domain}.{SteeringHookOp.OpType} node.";
            metadata.Add(new("featureflow.hook_form", "custom_operator"));
            opsets.Add(new(SteeringHookOp.Domain, SteeringHookOp.DomainVersion));
        }
        if (shared)
        {
            doc += " KV cache: one [batch, kv_heads, max_sequence_length, head_size] buffer per layer, bound as past and"
                + " present and written in place by com.microsoft.GroupQueryAttention at seqlens_k.";
            metadata.Add(new("featureflow.kv_layout", "shared_buffer"));
        }
        return g.Build(new OnnxModelOptions { DocString = doc, Metadata = metadata, DomainOpsets = opsets });
    }
}
