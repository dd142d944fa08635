using FeatureFlow.Onnx;
using FeatureFlow.Onnx.CustomOps;
using FeatureFlow.Onnx.Ir;
using DataType = FeatureFlow.Onnx.Ir.TensorProto.Types.DataType;

namespace FeatureFlow.Models.Export;

/// <summary>
/// The <see cref="OperatorSet.Fused"/> decoder: the same model, inputs and outputs as the plain graph, written in
/// ONNX Runtime's fused operators the way onnxruntime-genai's model builder writes a Llama.
/// </summary>
public static partial class LlamaGraphExporter
{
    /// <summary>
    /// The first norm is SimplifiedLayerNormalization; every later one is SkipSimplifiedLayerNormalization over
    /// (sublayer output, residual), whose 4th output (input_skip_bias_sum) is the next residual, so the residual
    /// additions are inside the norms. Attention: one packed Q/K/V MatMul, then either GroupQueryAttention's own
    /// rotary (when its kernel takes the head size) or com.microsoft.RotaryEmbedding on q and k, then
    /// GroupQueryAttention (SharedBuffer) or MultiHeadAttention (Concat).
    /// </summary>
    /// <remarks>
    /// With hooks, attn_out and mlp_out are steered before they enter their norm, as in the plain graph. resid_post is
    /// the sum the next norm would form, so that sum is an Add, and the hook's increment (add + the feature terms,
    /// <see cref="SteeringHook.Increment"/>) enters the next SkipSimplifiedLayerNormalization as its input with the sum
    /// as its skip: with all-zero steering that adds +0 to the same values and normalises them in the same kernel, so
    /// the hooked graph's logits are the bits of the graph without hooks. With
    /// <see cref="HookOperators.CustomOperator"/> each hook and the norm after it are one node, in place of that norm:
    /// attn_out's a SteeringHookNorm, and mlp_out's and resid_post's together a SteeringHookPairNorm per block, which
    /// steers the MLP output to m', forms m' + resid_post's add and feature terms of m' + residual, and normalises that
    /// plus the residual (so the sum is the steered stream, rounded as (m' + Δ) + residual rather than
    /// (m' + residual) + Δ). Their norm repeats ONNX Runtime's SkipSimplifiedLayerNormalization kernel operation for
    /// operation, so zero steering still gives the bits of the graph without hooks, which has the same node count.
    /// </remarks>
    private static ModelProto FusedDecoder(GraphBuilder g, ModelArchitecture arch, LlamaWeights w,
        HookedGraphOptions options, string embedding, string x, DecoderInputs inputs)
    {
        int d = arch.DModel;
        var layout = options.KvLayout;
        var steering = inputs.Steering;
        var rotary = RotaryCaches(g, arch);
        var concatBias = layout == KvCacheLayout.Concat ? ConcatAttentionBias(g, arch, inputs) : null;
        var xn = g.Op("SimplifiedLayerNormalization", [x, g.Initializer("blocks.0.ln_1.weight", w.RmsAttention[0], d)],
            Attr.Float("epsilon", arch.NormEpsilon), Attr.Int("axis", -1), Attr.Int("stash_type", 1));
        var residual = x;
        for (var l = 0; l < arch.Layers; l++)
        {
            using var _ = g.Scope($"blocks.{l}");
            var attn = layout == KvCacheLayout.SharedBuffer
                ? FusedGroupQueryAttention(g, arch, l, w, xn, rotary, inputs)
                : FusedMultiHeadAttention(g, arch, l, w, xn, rotary, inputs, concatBias!);
            var attnSite = new Site(l, SiteKind.AttnOut);
            if (steering?.Stacked is { } stackedSteering)
                (xn, residual) = SteeringHook.ApplyWithNorm(g, stackedSteering, attnSite, null, attn, residual, $"blocks.{l}.ln_2",
                    Gamma(g, $"blocks.{l}.ln_2", w.RmsFfn[l]), arch.NormEpsilon, withSum: true, sumName: null,
                    options.SiteOutputs, d);
            else
            {
                attn = SteeringHook.Apply(g, steering, attnSite, attn, options.SiteOutputs, d);
                (xn, residual) = SkipRmsNorm(g, attn, residual, $"blocks.{l}.ln_2", w.RmsFfn[l], arch.NormEpsilon);
            }
            var mlp = SwiGlu(g, arch, l, w, xn);
            var mlpSite = new Site(l, SiteKind.MlpOut);
            var last = l + 1 == arch.Layers;
            var (norm, weight) = last ? ("ln_f", w.RmsFinal) : ($"blocks.{l + 1}.ln_1", w.RmsAttention[l + 1]);
            if (steering is null)
            {
                // After the last block the residual sum is not needed: the final norm leaves its output 3 unwritten.
                (xn, residual) = SkipRmsNorm(g, mlp, residual, norm, weight, arch.NormEpsilon, withSum: !last);
                continue;
            }
            var site = new Site(l, SiteKind.ResidPost);
            var withSum = !last || options.SiteOutputs;
            var sumName = options.SiteOutputs ? site.HookName : null;
            if (steering.Stacked is { } stacked)
                (xn, residual) = SteeringHook.ApplyWithNorm(g, stacked, mlpSite, site, mlp, residual, norm,
                    Gamma(g, norm, weight), arch.NormEpsilon, withSum, sumName, options.SiteOutputs, d);
            else
            {
                mlp = SteeringHook.Apply(g, steering, mlpSite, mlp, options.SiteOutputs, d);
                var sum = g.Op("Add", [mlp, residual]);
                var increment = SteeringHook.Increment(g, steering, site, sum);
                (xn, residual) = SkipRmsNorm(g, increment, sum, norm, weight, arch.NormEpsilon, withSum, sumName);
            }
            if (options.SiteOutputs) g.Output(residual, site.HookName, DataType.Float, B, T, d);
        }
        var classifier = arch.TiedEmbeddings
            ? embedding
            : g.Initializer("lm_head.weight", w.Classifier, arch.VocabSize, d);
        var logits = g.Op("MatMul", [xn, g.Op("Transpose", [classifier], Attr.Ints("perm", 1, 0))]);
        g.Output(logits, GraphNames.Logits, DataType.Float, B, T, arch.VocabSize);

        var attention = layout == KvCacheLayout.SharedBuffer
            ? RotaryInsideAttention(arch) ? "GroupQueryAttention with rotary" : "RotaryEmbedding, GroupQueryAttention"
            : "RotaryEmbedding, MultiHeadAttention";
        var hooks = steering is null ? "no hooks"
            : steering.Stacked is not null ? "with FeatureFlow steering hooks at every site, each with the norm after it "
                + $"in one node: attn_out's {SteeringHookOp.Domain}.{SteeringHookOp.NormOpType}, mlp_out's and "
                + $"resid_post's together one {SteeringHookOp.Domain}.{SteeringHookOp.PairNormOpType} per block"
            : "with FeatureFlow steering hooks at every site";
        var doc = $"Llama decoder ({hooks}) "
            + "in ONNX Runtime's fused operators: SimplifiedLayerNormalization, SkipSimplifiedLayerNormalization, "
            + $"packed Q/K/V MatMul, {attention}.";
        List<KeyValuePair<string, string>> metadata =
        [
            new("featureflow.hooks", steering is null ? "false" : "true"),
            new("featureflow.slots_per_site", steering is null ? "0"
                : options.SlotsPerSite.ToString(System.Globalization.CultureInfo.InvariantCulture)),
            new("featureflow.operators", "fused"),
        ];
        if (steering?.Stacked is not null) metadata.Add(new("featureflow.hook_form", "custom_operator"));
        if (layout == KvCacheLayout.SharedBuffer) metadata.Add(new("featureflow.kv_layout", "shared_buffer"));
        List<KeyValuePair<string, long>> opsets = [new(MicrosoftDomain, 1)];
        if (steering?.Stacked is not null) opsets.Add(new(SteeringHookOp.Domain, SteeringHookOp.DomainVersion));
        return g.Build(new OnnxModelOptions
        {
            DocString = doc,
            Metadata = metadata,
            DomainOpsets = opsets,
        });
    }

    /// <summary>
    /// RMSNorm(input + skip)·{norm}.weight and input + skip itself (the next residual; left unwritten when withSum is
    /// false), named {norm}/normed and {norm}/residual (or <paramref name="sumName"/>, a site output's name).
    /// </summary>
    private static (string Normed, string Sum) SkipRmsNorm(GraphBuilder g, string input, string skip, string norm,
        float[] weight, float eps, bool withSum = true, string? sumName = null)
    {
        var outputs = g.DomainNode(MicrosoftDomain, "SkipSimplifiedLayerNormalization",
            [input, skip, Gamma(g, norm, weight)],
            [$"{norm}/normed", "", "", withSum ? sumName ?? $"{norm}/residual" : ""], Attr.Float("epsilon", eps));
        return (outputs[0], outputs[3]);
    }

    /// <summary>The norm's weight γ as an initializer named {norm}.weight.</summary>
    private static string Gamma(GraphBuilder g, string norm, float[] weight) =>
        g.Initializer($"{norm}.weight", weight, weight.Length);

    /// <summary>
    /// cos/sin of position·inverse frequency for every position the model can see, [context_length, head_size/2]: the
    /// cos_cache/sin_cache of RotaryEmbedding and GroupQueryAttention, each row computed as run.c does (float product,
    /// then cos/sin).
    /// </summary>
    private static (string Cos, string Sin) RotaryCaches(GraphBuilder g, ModelArchitecture arch)
    {
        var freqs = RotaryFrequencies.Inverse(arch);
        int half = freqs.Length, rows = arch.ContextLength;
        var cos = new float[rows * half];
        var sin = new float[rows * half];
        for (var p = 0; p < rows; p++)
            for (var i = 0; i < half; i++)
            {
                var angle = p * freqs[i];
                cos[p * half + i] = MathF.Cos(angle);
                sin[p * half + i] = MathF.Sin(angle);
            }
        return (g.Initializer("rotary.cos_cache", cos, rows, half), g.Initializer("rotary.sin_cache", sin, rows, half));
    }

    /// <summary>RotaryEmbedding's interleaved attribute: 1 for llama2.c's pairs (2i, 2i+1), 0 for rotate_half.</summary>
    private static AttributeProto RotaryInterleaved(ModelArchitecture arch, string name) =>
        Attr.Int(name, arch.Rotary == RotaryConvention.Interleaved ? 1 : 0);

    /// <summary>
    /// Whether GroupQueryAttention rotates q and k itself (do_rotary): ONNX Runtime 1.31's CPU kernel takes rotary
    /// only for head sizes that are a multiple of 16 (stories260K's is 8).
    /// </summary>
    private static bool RotaryInsideAttention(ModelArchitecture arch) => arch.HeadSize % 16 == 0;

    /// <summary>One MatMul for q, k and v: the three weights side by side, [d_model, d_model + 2·kv_dim].</summary>
    private static string PackedQkv(GraphBuilder g, ModelArchitecture arch, int l, LlamaWeights w, string xn)
    {
        var packed = new float[w.Wq[l].Length + w.Wk[l].Length + w.Wv[l].Length];
        w.Wq[l].CopyTo(packed, 0);
        w.Wk[l].CopyTo(packed, w.Wq[l].Length);
        w.Wv[l].CopyTo(packed, w.Wq[l].Length + w.Wk[l].Length);
        return Linear(g, xn, $"blocks.{l}.attn.W_QKV", packed, arch.DModel + 2 * arch.KvDim, arch.DModel);
    }

    /// <summary>
    /// q, k, v ([B, T, heads·hs], [B, T, kv_dim] twice) out of the packed projection, q and k rotated by
    /// com.microsoft.RotaryEmbedding at position_ids ([B, T]: each token's own position, so rows of any past length).
    /// </summary>
    private static (string Q, string K, string V) RotatedQkv(GraphBuilder g, ModelArchitecture arch, int l, string qkv,
        (string Cos, string Sin) rotary, string positionIds)
    {
        var parts = g.Op("Split", [qkv, g.ConstInt64(arch.DModel, arch.KvDim, arch.KvDim)], 3, Attr.Int("axis", -1));
        string Rotate(string t, string what) => g.DomainNode(MicrosoftDomain, "RotaryEmbedding",
            [t, positionIds, rotary.Cos, rotary.Sin], [$"blocks.{l}/attn/{what}_rotated"],
            RotaryInterleaved(arch, "interleaved"))[0];
        return (Rotate(parts[0], "q"), Rotate(parts[1], "k"), parts[2]);
    }

    /// <summary>
    /// com.microsoft.GroupQueryAttention over the shared KV buffer, as the plain SharedBuffer graph uses it; with
    /// <see cref="RotaryInsideAttention"/> the packed projection goes in whole and GQA rotates q and k at each row's
    /// positions (seqlens_k), otherwise RotaryEmbedding does it first.
    /// </summary>
    private static string FusedGroupQueryAttention(GraphBuilder g, ModelArchitecture arch, int l, LlamaWeights w,
        string xn, (string Cos, string Sin) rotary, DecoderInputs inputs)
    {
        using var _ = g.Scope("attn");
        var qkv = PackedQkv(g, arch, l, w, xn);
        string[] attentionInputs;
        AttributeProto[] attributes = [Attr.Int("num_heads", arch.Heads), Attr.Int("kv_num_heads", arch.KvHeads)];
        var state = new[] { inputs.PastKeys[l], inputs.PastValues[l], inputs.SeqlensK!, inputs.TotalLength! };
        if (RotaryInsideAttention(arch))
        {
            attentionInputs = [qkv, "", "", .. state, rotary.Cos, rotary.Sin];
            attributes = [.. attributes, Attr.Int("do_rotary", 1), RotaryInterleaved(arch, "rotary_interleaved")];
        }
        else
        {
            var (q, k, v) = RotatedQkv(g, arch, l, qkv, rotary, inputs.PositionIds);
            attentionInputs = [q, k, v, .. state];
        }
        var outputs = g.DomainNode(MicrosoftDomain, "GroupQueryAttention", attentionInputs,
            [$"blocks.{l}/attn/context", GraphNames.PresentKey(l), GraphNames.PresentValue(l)], attributes);
        g.Output(outputs[1], outputs[1], DataType.Float, B, arch.KvHeads, M, arch.HeadSize);
        g.Output(outputs[2], outputs[2], DataType.Float, B, arch.KvHeads, M, arch.HeadSize);
        return Linear(g, outputs[0], $"blocks.{l}.attn.W_O", w.Wo[l], arch.DModel, arch.DModel);
    }

    /// <summary>
    /// The Concat layout's mask as MultiHeadAttention's attention_bias: 0 where a query may see a key, float.MinValue
    /// elsewhere (as the plain graph's Where; finite, so a fully padded row stays finite), [B, 1, group·T, S] with
    /// the rows repeated once per query head of a KV head group (see <see cref="FusedMultiHeadAttention"/>).
    /// </summary>
    private static string ConcatAttentionBias(GraphBuilder g, ModelArchitecture arch, DecoderInputs inputs)
    {
        var allowed = AttentionAllowed(g, inputs.InputIds, inputs.AttentionMask!).Allowed; // [B, 1, 1, T, S]
        using var _ = g.Scope("mask");
        var allowedByToken = g.Op("Squeeze", [allowed, g.ConstInt64(1)]);                         // [B, 1, T, S]
        var bias = g.Op("Where", [allowedByToken, g.ScalarFloat(0f), g.ScalarFloat(float.MinValue)]);
        return arch.QueriesPerKvHead == 1 ? bias : g.Op("Tile", [bias, g.ConstInt64(1, 1, arch.QueriesPerKvHead, 1)]);
    }

    /// <summary>
    /// com.microsoft.MultiHeadAttention with past_key/past_value in and present_key/present_value out, in the
    /// plain graph's [B, kv_heads, S, hs] cache layout. MultiHeadAttention has no kv_num_heads (it needs as many K/V
    /// heads as query heads), so with grouped-query attention the query heads of one KV head are folded into the
    /// query sequence instead of copying K/V once per query head: query head kv·group + j at token t becomes KV head
    /// kv at query position j·T + t, whose mask row is token t's. Every query still attends to exactly its own KV
    /// head's keys, without the K/V expansion (onnxruntime-genai's repeat_kv) that would copy the whole cache per step.
    /// </summary>
    private static string FusedMultiHeadAttention(GraphBuilder g, ModelArchitecture arch, int l, LlamaWeights w,
        string xn, (string Cos, string Sin) rotary, DecoderInputs inputs, string bias)
    {
        using var _ = g.Scope("attn");
        int kv = arch.KvHeads, hs = arch.HeadSize, group = arch.QueriesPerKvHead;
        var (q, k, v) = RotatedQkv(g, arch, l, PackedQkv(g, arch, l, w, xn), rotary, inputs.PositionIds);
        if (group > 1)
        {
            var split = g.Op("Reshape", [q, g.ConstInt64(0, 0, kv, group, hs)]);          // [B, T, kv, group, hs]
            var byGroup = g.Op("Transpose", [split], Attr.Ints("perm", 0, 3, 1, 2, 4));    // [B, group, T, kv, hs]
            q = g.Op("Reshape", [byGroup, g.ConstInt64(0, -1, arch.KvDim)]);                // [B, group·T, kv·hs]
        }
        var outputs = g.DomainNode(MicrosoftDomain, "MultiHeadAttention",
            [q, k, v, "", "", bias, inputs.PastKeys[l], inputs.PastValues[l]],
            [$"blocks.{l}/attn/context", GraphNames.PresentKey(l), GraphNames.PresentValue(l)],
            Attr.Int("num_heads", kv));
        g.Output(outputs[1], outputs[1], DataType.Float, B, kv, S, hs);
        g.Output(outputs[2], outputs[2], DataType.Float, B, kv, S, hs);
        var context = outputs[0];
        if (group > 1)
        {
            var split = g.Op("Reshape", [context, g.ConstInt64(0, group, -1, kv, hs)]);   // [B, group, T, kv, hs]
            var byToken = g.Op("Transpose", [split], Attr.Ints("perm", 0, 2, 3, 1, 4));   // [B, T, kv, group, hs]
            context = g.Op("Reshape", [byToken, g.ConstInt64(0, 0, arch.DModel)]);
        }
        return Linear(g, context, $"blocks.{l}.attn.W_O", w.Wo[l], arch.DModel, arch.DModel);
    }
}
