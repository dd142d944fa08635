namespace FeatureFlow.Models.Gemma2;

/// <summary>
/// A Hugging Face Gemma2ForCausalLM checkpoint in memory: its config.json read into a <see cref="Gemma2Config"/> and
/// its tensors (model.embed_tokens.weight, model.layers.N.…, model.norm.weight, lm_head.weight when untied) mapped
/// onto <see cref="Gemma2Weights"/>, each checked against the shape the config implies.
/// </summary>
public sealed record Gemma2Checkpoint(Gemma2Config Config, Gemma2Weights Weights)
{
    /// <param name="configJson">config.json's text.</param>
    /// <param name="tensors">A tensor by its checkpoint name, as float32 data and shape (e.g. over safetensors files);
    /// it throws for a name it does not hold.</param>
    /// <param name="source">Where the checkpoint came from, for error messages.</param>
    public static Gemma2Checkpoint Read(string configJson, Func<string, (float[] Data, long[] Shape)> tensors,
        string source)
    {
        var config = Gemma2Config.Parse(configJson, Path.Combine(source, "config.json"));
        var a = config.Architecture;
        int d = a.DModel, q = a.Heads * a.HeadSize, kv = a.KvDim, hidden = a.HiddenDim;

        float[] Tensor(string name, params long[] shape)
        {
            var (data, found) = tensors(name);
            if (!found.SequenceEqual(shape))
                throw new InvalidDataException($"{source}: tensor '{name}' has shape [{string.Join(", ", found)}]; "
                    + $"the config implies [{string.Join(", ", shape)}]");
            return data;
        }
        float[][] PerLayer(string suffix, params long[] shape) =>
            Enumerable.Range(0, a.Layers).Select(l => Tensor($"model.layers.{l}.{suffix}", shape)).ToArray();

        var embedding = Tensor("model.embed_tokens.weight", a.VocabSize, d);
        var weights = new Gemma2Weights
        {
            TokenEmbedding = embedding,
            InputNorm = PerLayer("input_layernorm.weight", d),
            Wq = PerLayer("self_attn.q_proj.weight", q, d),
            Wk = PerLayer("self_attn.k_proj.weight", kv, d),
            Wv = PerLayer("self_attn.v_proj.weight", kv, d),
            Wo = PerLayer("self_attn.o_proj.weight", d, q),
            PostAttentionNorm = PerLayer("post_attention_layernorm.weight", d),
            PreFeedforwardNorm = PerLayer("pre_feedforward_layernorm.weight", d),
            Gate = PerLayer("mlp.gate_proj.weight", hidden, d),
            Up = PerLayer("mlp.up_proj.weight", hidden, d),
            Down = PerLayer("mlp.down_proj.weight", d, hidden),
            PostFeedforwardNorm = PerLayer("post_feedforward_layernorm.weight", d),
            FinalNorm = Tensor("model.norm.weight", d),
            Classifier = a.TiedEmbeddings ? embedding : Tensor("lm_head.weight", a.VocabSize, d),
        };
        return new Gemma2Checkpoint(config, weights);
    }
}
