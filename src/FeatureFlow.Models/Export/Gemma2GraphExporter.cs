using FeatureFlow.Models.Gemma2;
using FeatureFlow.Onnx;
using FeatureFlow.Onnx.Ir;
using static FeatureFlow.Models.Export.LlamaGraphExporter;
using DataType = FeatureFlow.Onnx.Ir.TensorProto.Types.DataType;

namespace FeatureFlow.Models.Export;

/// <summary>
/// Writes a Gemma 2 decoder as an ONNX graph with a KV cache and, optionally, the steering hook at every site, with
/// the same inputs, outputs and hook formula as <see cref="LlamaGraphExporter"/>. Per block:
/// h = x + post_attention_norm(attn(input_norm(x))), out = h + post_feedforward_norm(mlp(pre_feedforward_norm(h))),
/// every RMSNorm scaling by (1 + w). Hook sites follow TransformerLens's Gemma 2 convention (its
/// use_normalization_before_and_after blocks): hook_attn_out and hook_mlp_out are the branch outputs AFTER their post
/// norm, i.e. exactly what is added to the residual stream, and hook_resid_post is the block's output.
/// </summary>
/// <remarks>
/// The SharedBuffer layout's com.microsoft.GroupQueryAttention gives exactly Gemma 2's attention: scale =
/// query_pre_attn_scalar^-1/2 on q·k, then softcap = attn_logit_softcapping as c·tanh(s/c) over the keys a query
/// sees, and on sliding layers local_window_size = sliding_window. In ONNX Runtime 1.31's CPU kernel a query sees
/// the last local_window_size keys, itself included, as in transformers; earlier releases counted one more (there
/// window − 1 was right). The Gemma2 graph tests hold both layouts to the reference forward pass, so a change fails
/// them.
/// </remarks>
public static class Gemma2GraphExporter
{
    /// <param name="externalData">The folder's shared weights file; null writes every initializer inline.</param>
    public static ModelProto Export(Gemma2Config config, Gemma2Weights w, HookedGraphOptions options, string modelName,
        ExternalDataFile? externalData = null)
    {
        config.Validate();
        options.RequirePlainOperators("Gemma 2");
        var arch = config.Architecture;
        var g = new GraphBuilder(modelName, externalData);
        int d = arch.DModel, hs = arch.HeadSize, kvHeads = arch.KvHeads;
        var shared = options.KvLayout == KvCacheLayout.SharedBuffer;
        var inputs = LlamaGraphExporter.DeclareInputs(g, arch, options);
        var (inputIds, attentionMask, positionIds) = (inputs.InputIds, inputs.AttentionMask, inputs.PositionIds);
        var (seqlensK, totalLength, steering) = (inputs.SeqlensK, inputs.TotalLength, inputs.Steering);
        var (pastKeys, pastValues) = (inputs.PastKeys, inputs.PastValues);

        var embedding = g.Initializer("model.embed_tokens.weight", w.TokenEmbedding, arch.VocabSize, d);
        var x = g.Op("Mul", [g.Op("Gather", [embedding, inputIds], Attr.Int("axis", 0)),
            g.ScalarFloat(config.EmbeddingScale)]);
        var (cos, sin) = RotaryTables(g, arch, positionIds);
        var masks = shared ? null : Masks(g, inputIds, attentionMask!, config);

        for (var l = 0; l < arch.Layers; l++)
        {
            using var _ = g.Scope($"blocks.{l}");
            var eps = arch.NormEpsilon;
            var xn = RmsNorm(g, x, Norm(g, $"blocks.{l}.ln_1.weight", w.InputNorm[l]), eps);
            var q = Heads(g, Linear(g, xn, $"blocks.{l}.attn.W_Q", w.Wq[l], arch.Heads * hs, d), arch.Heads, hs);
            var key = Heads(g, Linear(g, xn, $"blocks.{l}.attn.W_K", w.Wk[l], arch.KvDim, d), kvHeads, hs);
            var value = Heads(g, Linear(g, xn, $"blocks.{l}.attn.W_V", w.Wv[l], arch.KvDim, d), kvHeads, hs);
            q = RotateHalf(g, q, cos, sin);
            key = RotateHalf(g, key, cos, sin);
            var context = shared
                ? SharedBufferAttention(g, config, l, q, key, value, seqlensK!, totalLength!, pastKeys[l],
                    pastValues[l])
                : ConcatAttention(g, config, l, q, key, value, masks!.For(config.IsSliding(l)), pastKeys[l],
                    pastValues[l]);
            var attn = Linear(g, context, $"blocks.{l}.attn.W_O", w.Wo[l], d, arch.Heads * hs);
            attn = RmsNorm(g, attn, Norm(g, $"blocks.{l}.ln_1_post.weight", w.PostAttentionNorm[l]), eps);
            attn = SteeringHook.Apply(g, steering, new Site(l, SiteKind.AttnOut), attn, options.SiteOutputs, d);
            x = g.Op("Add", [x, attn]);

            xn = RmsNorm(g, x, Norm(g, $"blocks.{l}.ln_2.weight", w.PreFeedforwardNorm[l]), eps);
            var mlp = GeGlu(g, arch, l, w, xn);
            mlp = RmsNorm(g, mlp, Norm(g, $"blocks.{l}.ln_2_post.weight", w.PostFeedforwardNorm[l]), eps);
            mlp = SteeringHook.Apply(g, steering, new Site(l, SiteKind.MlpOut), mlp, options.SiteOutputs, d);
            x = g.Op("Add", [x, mlp]);
            x = SteeringHook.Apply(g, steering, new Site(l, SiteKind.ResidPost), x, options.SiteOutputs, d);
        }

        x = RmsNorm(g, x, Norm(g, "ln_f.weight", w.FinalNorm), arch.NormEpsilon);
        var classifier = arch.TiedEmbeddings
            ? embedding
            : g.Initializer("lm_head.weight", w.Classifier, arch.VocabSize, d);
        var logits = g.Op("MatMul", [x, g.Op("Transpose", [classifier], Attr.Ints("perm", 1, 0))]);
        if (config.FinalLogitSoftcap is { } cap) logits = SoftCap(g, logits, cap);
        g.Output(logits, GraphNames.Logits, DataType.Float, B, T, arch.VocabSize);

        return BuildPlain(g, options, options.Hooks
            ? "Gemma 2 decoder with FeatureFlow steering hooks at every attn_out, mlp_out and resid_post site"
                + " (attn_out and mlp_out after their post-norms: what each branch adds to the residual stream)."
            : "Gemma 2 decoder (no hooks).");
    }

    /// <summary>Gemma's RMSNorm multiplies by (1 + w); the initializer holds 1 + w, computed in float32 as transformers
    /// does.</summary>
    private static string Norm(GraphBuilder g, string name, float[] weight) =>
        g.Initializer(name, weight.Select(v => 1f + v).ToArray(), weight.Length);

    private static string Heads(GraphBuilder g, string projected, int heads, int hs) =>
        g.Op("Reshape", [projected, g.ConstInt64(0, 0, heads, hs)]);

    /// <summary>c·tanh(x / c): transformers' soft-capping of attention scores and of the final logits.</summary>
    private static string SoftCap(GraphBuilder g, string x, float cap) =>
        g.Op("Mul", [g.Op("Tanh", [g.Op("Div", [x, g.ScalarFloat(cap)])]), g.ScalarFloat(cap)]);

    /// <summary>cos/sin of position·freq, [B, T, 1, head_dim/2]: broadcast over heads and either half.</summary>
    private static (string Cos, string Sin) RotaryTables(GraphBuilder g, ModelArchitecture arch, string positionIds)
    {
        using var _ = g.Scope("rotary");
        var freqs = RotaryFrequencies.Inverse(arch);
        var pos = g.Op("Unsqueeze",
            [g.Op("Cast", [positionIds], Attr.Int("to", (long)DataType.Float)), g.ConstInt64(-1)]);
        var angles = g.Op("Mul", [pos, g.Initializer("rotary.inv_freq", freqs, freqs.Length)]);
        var headAxis = g.ConstInt64(2);
        return (g.Op("Unsqueeze", [g.Op("Cos", [angles]), headAxis]),
            g.Op("Unsqueeze", [g.Op("Sin", [angles]), headAxis]));
    }

    /// <summary>
    /// The rotate_half convention on [B, T, heads, head_dim]: channel i pairs with i + head_dim/2, so
    /// (x1, x2) → (x1·cos − x2·sin, x2·cos + x1·sin).
    /// </summary>
    private static string RotateHalf(GraphBuilder g, string t, string cos, string sin)
    {
        var halves = g.Op("Split", [t], 2, Attr.Int("axis", -1));
        var first = g.Op("Sub", [g.Op("Mul", [halves[0], cos]), g.Op("Mul", [halves[1], sin])]);
        var second = g.Op("Add", [g.Op("Mul", [halves[1], cos]), g.Op("Mul", [halves[0], sin])]);
        return g.Op("Concat", [first, second], Attr.Int("axis", -1));
    }

    /// <summary>Which keys each query may see on global layers and, when any layer slides, on sliding ones.</summary>
    private sealed record AttentionMasks(string Global, string? Sliding)
    {
        public string For(bool sliding) => sliding ? Sliding! : Global;
    }

    /// <summary>
    /// [B, 1, 1, T, S] like the grouped scores: causal over absolute positions and not padding (global layers), and
    /// additionally query − key &lt; sliding_window (sliding layers).
    /// </summary>
    private static AttentionMasks Masks(GraphBuilder g, string inputIds, string attentionMask,
        Gemma2Config config)
    {
        var (global, sliding) = LlamaGraphExporter.AttentionAllowed(g, inputIds, attentionMask,
            config.SlidingLayers.Contains(true) ? config.SlidingWindow : null);
        return new AttentionMasks(global, sliding);
    }

    /// <summary>Attention over Concat(past, new) with plain operators; q, key, value: [B, T, heads, head_dim].
    /// </summary>
    private static string ConcatAttention(GraphBuilder g, Gemma2Config config, int l, string q, string key,
        string value, string allowed, string pastKey, string pastValue)
    {
        using var _ = g.Scope("attn");
        var arch = config.Architecture;
        int hs = arch.HeadSize, kv = arch.KvHeads;
        var toHeadMajor = Attr.Ints("perm", 0, 2, 1, 3);
        var presentKey = g.Node("Concat", [pastKey, g.Op("Transpose", [key], toHeadMajor)], [GraphNames.PresentKey(l)],
            Attr.Int("axis", 2))[0];
        var presentValue = g.Node("Concat", [pastValue, g.Op("Transpose", [value], toHeadMajor)],
            [GraphNames.PresentValue(l)], Attr.Int("axis", 2))[0];
        g.Output(presentKey, presentKey, DataType.Float, B, kv, S, hs);
        g.Output(presentValue, presentValue, DataType.Float, B, kv, S, hs);

        // Grouped-query attention without copying K/V, as LlamaGraphExporter does: queries [B, kv, group, T, hs]
        // against K/V [B, kv, 1, S, hs].
        var groupedQ = g.Op("Reshape", [g.Op("Transpose", [q], toHeadMajor),
            g.ConstInt64(0, kv, arch.QueriesPerKvHead, -1, hs)]);
        var groupAxis = g.ConstInt64(2);
        var keysT = g.Op("Transpose", [g.Op("Unsqueeze", [presentKey, groupAxis])], Attr.Ints("perm", 0, 1, 2, 4, 3));
        var scores = g.Op("Mul", [g.Op("MatMul", [groupedQ, keysT]), g.ScalarFloat(config.QueryScale)]);
        if (config.AttentionLogitSoftcap is { } cap) scores = SoftCap(g, scores, cap);
        scores = g.Op("Where", [allowed, scores, g.ScalarFloat(float.MinValue)]);
        var probs = g.Op("Softmax", [scores], Attr.Int("axis", -1));
        var context = g.Op("MatMul", [probs, g.Op("Unsqueeze", [presentValue, groupAxis])]);
        context = g.Op("Reshape", [context, g.ConstInt64(0, arch.Heads, -1, hs)]);
        return g.Op("Reshape", [g.Op("Transpose", [context], toHeadMajor), g.ConstInt64(0, 0, arch.Heads * hs)]);
    }

    /// <summary>
    /// One com.microsoft.GroupQueryAttention node over the rotated q, key, value, writing K/V in place at seqlens_k as
    /// in <see cref="LlamaGraphExporter"/>, with Gemma 2's scale, soft-cap and (sliding layers) local window.
    /// </summary>
    private static string SharedBufferAttention(GraphBuilder g, Gemma2Config config, int l, string q, string key,
        string value, string seqlensK, string totalLength, string pastKey, string pastValue)
    {
        using var _ = g.Scope("attn");
        var arch = config.Architecture;
        var flat = g.ConstInt64(0, 0, -1);
        List<AttributeProto> attributes =
        [
            Attr.Int("num_heads", arch.Heads),
            Attr.Int("kv_num_heads", arch.KvHeads),
            Attr.Float("scale", config.QueryScale),
        ];
        if (config.AttentionLogitSoftcap is { } cap) attributes.Add(Attr.Float("softcap", cap));
        if (config.IsSliding(l)) attributes.Add(Attr.Int("local_window_size", config.SlidingWindow));
        var outputs = g.DomainNode(MicrosoftDomain, "GroupQueryAttention",
            [g.Op("Reshape", [q, flat]), g.Op("Reshape", [key, flat]), g.Op("Reshape", [value, flat]),
                pastKey, pastValue, seqlensK, totalLength],
            [$"blocks.{l}/attn/context", GraphNames.PresentKey(l), GraphNames.PresentValue(l)], [.. attributes]);
        g.Output(outputs[1], outputs[1], DataType.Float, B, arch.KvHeads, M, arch.HeadSize);
        g.Output(outputs[2], outputs[2], DataType.Float, B, arch.KvHeads, M, arch.HeadSize);
        return outputs[0];
    }

    /// <summary>
    /// down(gelu_tanh(gate(x)) · up(x)); gelu_tanh(x) = x/2·(1 + tanh(√(2/π)·(x + 0.044715·x³))), PyTorch's
    /// gelu(approximate="tanh") and transformers' gelu_pytorch_tanh.
    /// </summary>
    private static string GeGlu(GraphBuilder g, ModelArchitecture arch, int l, Gemma2Weights w, string xn)
    {
        using var _ = g.Scope("mlp");
        int d = arch.DModel, h = arch.HiddenDim;
        var gate = Linear(g, xn, $"blocks.{l}.mlp.W_gate", w.Gate[l], h, d);
        var up = Linear(g, xn, $"blocks.{l}.mlp.W_in", w.Up[l], h, d);
        var cube = g.Op("Mul", [gate, g.Op("Mul", [gate, gate])]);
        var inner = g.Op("Mul", [g.Op("Add", [gate, g.Op("Mul", [cube, g.ScalarFloat(0.044715f)])]),
            g.ScalarFloat((float)Math.Sqrt(2 / Math.PI))]);
        var gelu = g.Op("Mul", [g.Op("Mul", [gate, g.ScalarFloat(0.5f)]),
            g.Op("Add", [g.Op("Tanh", [inner]), g.ScalarFloat(1f)])]);
        return Linear(g, g.Op("Mul", [gelu, up]), $"blocks.{l}.mlp.W_out", w.Down[l], d, h);
    }
}
