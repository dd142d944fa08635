using FeatureFlow.Models.Export;

namespace FeatureFlow.Models.HuggingFace;

/// <summary>
/// GPT2LMHeadModel: learned positions, LayerNorm, Conv1D weights stored [in, out], gelu_new, biases, a tied lm_head
/// (untied if the config says so), written by <see cref="Gpt2GraphExporter"/>. Tensor names may carry the
/// "transformer." prefix (saved from GPT2LMHeadModel) or not (saved from GPT2Model, as openai-community/gpt2 is).
/// </summary>
public sealed class HfGpt2 : IHfArchitecture
{
    /// <summary>transformers' names for the tanh approximation of GELU; "gelu" (erf) would differ.</summary>
    private static readonly string[] GeluTanh = ["gelu_new", "gelu_pytorch_tanh"];

    public string Name => "GPT2LMHeadModel";

    public HfModel Load(HfConfig config, HfCheckpoint checkpoint, Action<string> progress)
    {
        var arch = Architecture(config);
        var (bos, eos) = HfArchitectures.TokenIds(config);
        var weights = Weights(arch, checkpoint);
        progress($"read {checkpoint.TensorNames.Count} tensors from {checkpoint.Source}");
        return new HfModel(arch, bos, eos, "gpt2",
            (options, name, external) => Gpt2GraphExporter.Export(arch, weights, options, name, external));
    }

    private static ModelArchitecture Architecture(HfConfig config)
    {
        var activation = config.String("activation_function") ?? "gelu_new";
        if (!GeluTanh.Contains(activation))
            throw new InvalidDataException($"{config.Path}: activation_function is '{activation}'; the exporter "
                + $"supports only {string.Join(" or ", GeluTanh)} (GELU's tanh approximation)");
        config.Require("scale_attn_weights", config.Bool("scale_attn_weights", true), true,
            "scores divided by √head_size");
        config.Require("scale_attn_by_inverse_layer_idx", config.Bool("scale_attn_by_inverse_layer_idx", false), false,
            "the same attention scale in every layer");
        config.Require("add_cross_attention", config.Bool("add_cross_attention", false), false, "a decoder-only model");
        int d = config.Int("n_embd"), heads = config.Int("n_head");
        var arch = new ModelArchitecture
        {
            Family = "gpt2",
            DModel = d,
            HiddenDim = config.OptionalInt("n_inner") ?? 4 * d,
            Layers = config.Int("n_layer"),
            Heads = heads,
            KvHeads = heads,
            VocabSize = config.Int("vocab_size"),
            ContextLength = config.Int("n_positions"),
            Norm = NormKind.LayerNorm,
            NormEpsilon = (float)config.Number("layer_norm_epsilon", 1e-5),
            Mlp = MlpKind.Gelu,
            Positions = PositionEmbedding.Learned,
            TiedEmbeddings = config.Bool("tie_word_embeddings", true),
        };
        try { arch.Validate(); }
        catch (InvalidDataException e) { throw new InvalidDataException($"{config.Path}: {e.Message}", e); }
        return arch;
    }

    private static Gpt2Weights Weights(ModelArchitecture arch, HfCheckpoint checkpoint)
    {
        var prefix = checkpoint.Contains("transformer.wte.weight") ? "transformer." : "";
        int d = arch.DModel, hidden = arch.HiddenDim;
        float[] Read(string name, params long[] shape) => checkpoint.Read(prefix + name, shape);
        float[][] PerLayer(string tensor, params long[] shape) =>
            Enumerable.Range(0, arch.Layers).Select(l => Read($"h.{l}.{tensor}", shape)).ToArray();

        var embedding = Read("wte.weight", arch.VocabSize, d);
        var weights = new Gpt2Weights
        {
            TokenEmbedding = embedding,
            PositionEmbedding = Read("wpe.weight", arch.ContextLength, d),
            Ln1Weight = PerLayer("ln_1.weight", d),
            Ln1Bias = PerLayer("ln_1.bias", d),
            QkvWeight = PerLayer("attn.c_attn.weight", d, 3 * d),
            QkvBias = PerLayer("attn.c_attn.bias", 3 * d),
            AttnOutWeight = PerLayer("attn.c_proj.weight", d, d),
            AttnOutBias = PerLayer("attn.c_proj.bias", d),
            Ln2Weight = PerLayer("ln_2.weight", d),
            Ln2Bias = PerLayer("ln_2.bias", d),
            MlpInWeight = PerLayer("mlp.c_fc.weight", d, hidden),
            MlpInBias = PerLayer("mlp.c_fc.bias", hidden),
            MlpOutWeight = PerLayer("mlp.c_proj.weight", hidden, d),
            MlpOutBias = PerLayer("mlp.c_proj.bias", d),
            LnFinalWeight = Read("ln_f.weight", d),
            LnFinalBias = Read("ln_f.bias", d),
            Classifier = arch.TiedEmbeddings ? embedding : checkpoint.Read("lm_head.weight", arch.VocabSize, d),
        };
        // Older checkpoints store each layer's causal mask as attn.bias / attn.masked_bias buffers.
        checkpoint.RequireAllRead("GPT2LMHeadModel", name => name.EndsWith(".attn.bias", StringComparison.Ordinal)
            || name.EndsWith(".attn.masked_bias", StringComparison.Ordinal)
            || (arch.TiedEmbeddings && name == "lm_head.weight"));
        return weights;
    }
}
