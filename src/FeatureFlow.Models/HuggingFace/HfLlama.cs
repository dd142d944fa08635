using FeatureFlow.Models.Export;

namespace FeatureFlow.Models.HuggingFace;

/// <summary>
/// LlamaForCausalLM: grouped KV heads, tied or untied embeddings, rope_theta and rope scaling (linear, dynamic,
/// llama3, yarn), written by <see cref="LlamaGraphExporter"/>.
/// </summary>
/// <remarks>
/// Hugging Face's Llama rotates channel pairs (i, i + head_size/2) ("rotate_half"); convert_llama_weights_to_hf.py
/// permutes the rows of q_proj and k_proj within each head so that this equals Meta's interleaved pairs (2i, 2i+1).
/// Reading inverts that permutation, which is exact for any rotate_half checkpoint (a permutation of a head's
/// channels applied to queries and keys alike leaves every q·k unchanged), so the graphs are our interleaved ones.
/// YaRN's attention factor multiplies cos and sin, i.e. the rotated queries and keys; rotation is linear, so it is
/// folded into q_proj and k_proj here and every graph variant applies it without knowing.
/// </remarks>
public sealed class HfLlama : IHfArchitecture
{
    public string Name => "LlamaForCausalLM";

    public HfModel Load(HfConfig config, HfCheckpoint checkpoint, Action<string> progress)
    {
        var arch = Architecture(config);
        var (bos, eos) = HfArchitectures.TokenIds(config);
        var weights = Weights(arch, checkpoint, progress);
        return new HfModel(arch, bos, eos, "llama",
            (options, name, external) => LlamaGraphExporter.Export(arch, weights, options, name, external))
        {
            BatchedOperators = OperatorSet.Fused,
        };
    }

    private static ModelArchitecture Architecture(HfConfig config)
    {
        config.Require("hidden_act", config.String("hidden_act") ?? "silu", "silu", "Llama's SwiGLU MLP");
        config.Require("attention_bias", config.Bool("attention_bias", false), false, "projections without biases");
        config.Require("mlp_bias", config.Bool("mlp_bias", false), false, "projections without biases");
        int d = config.Int("hidden_size"), heads = config.Int("num_attention_heads");
        if (config.OptionalInt("head_dim") is { } headDim)
            config.Require("head_dim", headDim, d / heads, "heads that split hidden_size evenly");
        var context = config.Int("max_position_embeddings");
        var (theta, scaling) = HfRopeConfig.Read(config, context);
        var arch = new ModelArchitecture
        {
            Family = "llama",
            DModel = d,
            HiddenDim = config.Int("intermediate_size"),
            Layers = config.Int("num_hidden_layers"),
            Heads = heads,
            KvHeads = config.OptionalInt("num_key_value_heads") ?? heads,
            VocabSize = config.Int("vocab_size"),
            ContextLength = context,
            NormEpsilon = (float)config.Number("rms_norm_eps", 1e-6),
            RotaryTheta = theta,
            RopeScaling = scaling,
            TiedEmbeddings = config.Bool("tie_word_embeddings", false),
        };
        try { arch.Validate(); }
        catch (InvalidDataException e) { throw new InvalidDataException($"{config.Path}: {e.Message}", e); }
        return arch;
    }

    private static LlamaWeights Weights(ModelArchitecture arch, HfCheckpoint checkpoint, Action<string> progress)
    {
        int d = arch.DModel, kv = arch.KvDim, hidden = arch.HiddenDim, layers = arch.Layers;
        var qkScale = RotaryFrequencies.AttentionFactor(arch);
        float[][] PerLayer(Func<int, float[]> read) => Enumerable.Range(0, layers).Select(read).ToArray();
        string Layer(int l, string tensor) => $"model.layers.{l}.{tensor}.weight";

        var embedding = checkpoint.Read("model.embed_tokens.weight", arch.VocabSize, d);
        var wq = PerLayer(l =>
            FromRotateHalf(checkpoint.Read(Layer(l, "self_attn.q_proj"), d, d), arch.Heads, arch, qkScale));
        var wk = PerLayer(l =>
            FromRotateHalf(checkpoint.Read(Layer(l, "self_attn.k_proj"), kv, d), arch.KvHeads, arch, qkScale));
        progress($"read q_proj and k_proj of {layers} layers (rotate_half rows back to interleaved pairs)");
        var weights = new LlamaWeights
        {
            TokenEmbedding = embedding,
            RmsAttention = PerLayer(l => checkpoint.Read(Layer(l, "input_layernorm"), d)),
            Wq = wq,
            Wk = wk,
            Wv = PerLayer(l => checkpoint.Read(Layer(l, "self_attn.v_proj"), kv, d)),
            Wo = PerLayer(l => checkpoint.Read(Layer(l, "self_attn.o_proj"), d, d)),
            RmsFfn = PerLayer(l => checkpoint.Read(Layer(l, "post_attention_layernorm"), d)),
            W1 = PerLayer(l => checkpoint.Read(Layer(l, "mlp.gate_proj"), hidden, d)),
            W2 = PerLayer(l => checkpoint.Read(Layer(l, "mlp.down_proj"), d, hidden)),
            W3 = PerLayer(l => checkpoint.Read(Layer(l, "mlp.up_proj"), hidden, d)),
            RmsFinal = checkpoint.Read("model.norm.weight", d),
            Classifier = arch.TiedEmbeddings ? embedding : checkpoint.Read("lm_head.weight", arch.VocabSize, d),
        };
        checkpoint.RequireAllRead("LlamaForCausalLM", name =>
            name.EndsWith(".rotary_emb.inv_freq", StringComparison.Ordinal)
            || (arch.TiedEmbeddings && name == "lm_head.weight"));
        progress($"read {checkpoint.TensorNames.Count} tensors from {checkpoint.Source}");
        return weights;
    }

    /// <summary>
    /// Undoes convert_llama_weights_to_hf.py's permute(w, n_heads): within each head, row t·(hs/2) + j goes back to
    /// row 2j + t. Optionally scales every row (YaRN's attention factor).
    /// </summary>
    internal static float[] FromRotateHalf(float[] w, int heads, ModelArchitecture arch, float scale = 1f)
    {
        int hs = arch.HeadSize, inDim = arch.DModel, half = hs / 2;
        var result = new float[w.Length];
        for (var h = 0; h < heads; h++)
            for (var j = 0; j < half; j++)
                for (var t = 0; t < 2; t++)
                {
                    var from = w.AsSpan((h * hs + t * half + j) * inDim, inDim);
                    var to = result.AsSpan((h * hs + 2 * j + t) * inDim, inDim);
                    if (scale == 1f) from.CopyTo(to);
                    else for (var i = 0; i < inDim; i++) to[i] = from[i] * scale;
                }
        return result;
    }
}
