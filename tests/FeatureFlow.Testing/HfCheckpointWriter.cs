using System.Text.Json.Nodes;
using FeatureFlow.Models;
using FeatureFlow.Models.Formats;
using FeatureFlow.Models.HuggingFace;

namespace FeatureFlow.Testing;

/// <summary>
/// Writes a Hugging Face checkpoint folder the way transformers' save_pretrained lays it out: config.json, the
/// weights as one model.safetensors or as model-0000i-of-0000n.safetensors shards with model.safetensors.index.json,
/// and tokenizer files. Tensors are stored as F32, F16 or BF16 (<see cref="SafeTensorsWriter.Encode"/>), or as raw
/// bytes of any dtype, for refusal tests.
/// </summary>
public sealed class HfCheckpointWriter(string directory)
{
    // Float tensors keep their values until Write, which encodes them as DType then says.
    private readonly List<(string Name, SafeTensorsDType? DType, long[] Shape, float[]? Values, byte[]? Bytes)>
        _tensors = [];
    private readonly Dictionary<string, string> _files = new(StringComparer.Ordinal);

    public string Directory { get; } = directory;

    public JsonObject Config { get; set; } = new();

    /// <summary>The dtype <see cref="Write"/> stores float tensors as: F32, F16 or BF16.</summary>
    public SafeTensorsDType DType { get; set; } = SafeTensorsDType.F32;

    public HfCheckpointWriter Tensor(string name, ReadOnlySpan<float> values, params long[] shape)
    {
        _tensors.RemoveAll(t => t.Name == name);
        _tensors.Add((name, null, shape, values.ToArray(), null));
        return this;
    }

    /// <summary>A tensor stored as given, whatever its dtype (e.g. I8 or F8_E4M3, which the exporter must refuse).
    /// </summary>
    public HfCheckpointWriter RawTensor(string name, SafeTensorsDType dtype, long[] shape, byte[] bytes)
    {
        _tensors.RemoveAll(t => t.Name == name);
        _tensors.Add((name, dtype, shape, null, bytes));
        return this;
    }

    public HfCheckpointWriter Remove(string name)
    {
        _tensors.RemoveAll(t => t.Name == name);
        return this;
    }

    public HfCheckpointWriter File(string name, string text)
    {
        _files[name] = text;
        return this;
    }

    /// <summary>A tokenizer.json with a vocabulary and no merges: the model folder carries it, these tests feed ids.
    /// </summary>
    public HfCheckpointWriter StandInTokenizer(int vocab)
    {
        var ids = new JsonObject();
        for (var i = 0; i < vocab; i++) ids[$"<{i}>"] = i;
        return File("tokenizer.json", new JsonObject
        {
            ["version"] = "1.0",
            ["model"] = new JsonObject { ["type"] = "BPE", ["vocab"] = ids, ["merges"] = new JsonArray() },
        }.ToJsonString());
    }

    /// <summary>Writes everything; <paramref name="shards"/> above 1 splits the tensors, in order, into that many files.
    /// </summary>
    public string Write(int shards = 1)
    {
        System.IO.Directory.CreateDirectory(Directory);
        System.IO.File.WriteAllText(Path.Combine(Directory, "config.json"), Config.ToJsonString());
        foreach (var (name, text) in _files) System.IO.File.WriteAllText(Path.Combine(Directory, name), text);
        var tensors = _tensors.Select(t => t.Values is { } values
            ? (Name: t.Name, DType, t.Shape, Bytes: SafeTensorsWriter.Encode(values, DType))
            : (Name: t.Name, DType: t.DType!.Value, t.Shape, Bytes: t.Bytes!)).ToList();
        if (shards == 1)
        {
            WriteSafeTensors(Path.Combine(Directory, "model.safetensors"), tensors);
            return Directory;
        }
        var weightMap = new JsonObject();
        var perShard = (tensors.Count + shards - 1) / shards;
        for (var s = 0; s < shards; s++)
        {
            var file = $"model-{s + 1:D5}-of-{shards:D5}.safetensors";
            var part = tensors.Skip(s * perShard).Take(perShard).ToList();
            WriteSafeTensors(Path.Combine(Directory, file), part);
            foreach (var t in part) weightMap[t.Name] = file;
        }
        var index = new JsonObject
        {
            ["metadata"] = new JsonObject { ["total_size"] = tensors.Sum(t => (long)t.Bytes.Length) },
            ["weight_map"] = weightMap,
        };
        System.IO.File.WriteAllText(Path.Combine(Directory, "model.safetensors.index.json"), index.ToJsonString());
        return Directory;
    }

    /// <summary>Float32 values as they come back after a round trip through <paramref name="dtype"/>.</summary>
    public static float[] RoundTrip(ReadOnlySpan<float> values, SafeTensorsDType dtype)
    {
        // Decoded here, not by SafeTensorsFile, so that the export tests check the reader's decoding too.
        var bytes = SafeTensorsWriter.Encode(values, dtype);
        var result = new float[values.Length];
        for (var i = 0; i < result.Length; i++)
            result[i] = dtype switch
            {
                SafeTensorsDType.F32 => BitConverter.ToSingle(bytes, 4 * i),
                SafeTensorsDType.F16 => (float)BitConverter.UInt16BitsToHalf(BitConverter.ToUInt16(bytes, 2 * i)),
                _ => BitConverter.Int32BitsToSingle(BitConverter.ToUInt16(bytes, 2 * i) << 16),
            };
        return result;
    }

    /// <summary>The llama2.c weights rounded through <paramref name="dtype"/>: what a checkpoint stored so holds.
    /// </summary>
    public static LoadedCheckpoint RoundTrip(LoadedCheckpoint c, SafeTensorsDType dtype)
    {
        float[] R(float[] v) => RoundTrip(v, dtype);
        float[][] L(float[][] v) => v.Select(R).ToArray();
        var w = c.Weights;
        var embedding = R(w.TokenEmbedding);
        return c with
        {
            Weights = new LlamaWeights
            {
                TokenEmbedding = embedding, RmsAttention = L(w.RmsAttention), Wq = L(w.Wq), Wk = L(w.Wk),
                Wv = L(w.Wv), Wo = L(w.Wo), RmsFfn = L(w.RmsFfn), W1 = L(w.W1), W2 = L(w.W2), W3 = L(w.W3),
                RmsFinal = R(w.RmsFinal),
                Classifier = ReferenceEquals(w.Classifier, w.TokenEmbedding) ? embedding : R(w.Classifier),
            },
        };
    }

    private static void WriteSafeTensors(string path,
        IEnumerable<(string Name, SafeTensorsDType DType, long[] Shape, byte[] Bytes)> tensors)
    {
        var writer = new SafeTensorsWriter().Metadata("format", "pt");
        foreach (var (name, dtype, shape, bytes) in tensors) writer.AddEncoded(name, dtype, shape, bytes);
        writer.Write(path);
    }
}

/// <summary>Test checkpoints in Hugging Face's layouts, built from weights we hold.</summary>
public static class HfTestCheckpoints
{
    /// <summary>
    /// A llama2.c checkpoint as LlamaForCausalLM, converted as transformers' convert_llama_weights_to_hf.py does:
    /// q_proj and k_proj rows permuted for its rotate_half convention, everything else as is. Untied writes the
    /// classifier as lm_head.weight with tie_word_embeddings false.
    /// </summary>
    public static HfCheckpointWriter Llama(LoadedCheckpoint c, string directory, bool tied = true)
    {
        var a = c.Architecture;
        var w = c.Weights;
        int d = a.DModel, kv = a.KvDim, h = a.HiddenDim;
        var writer = new HfCheckpointWriter(directory)
        {
            Config = new System.Text.Json.Nodes.JsonObject
            {
                ["architectures"] = new System.Text.Json.Nodes.JsonArray("LlamaForCausalLM"),
                ["model_type"] = "llama",
                ["hidden_size"] = d,
                ["intermediate_size"] = h,
                ["num_hidden_layers"] = a.Layers,
                ["num_attention_heads"] = a.Heads,
                ["num_key_value_heads"] = a.KvHeads,
                ["vocab_size"] = a.VocabSize,
                ["max_position_embeddings"] = a.ContextLength,
                ["rms_norm_eps"] = a.NormEpsilon,
                ["rope_theta"] = a.RotaryTheta,
                ["rope_scaling"] = null,
                ["hidden_act"] = "silu",
                ["attention_bias"] = false,
                ["tie_word_embeddings"] = tied,
                ["bos_token_id"] = 1,
                ["eos_token_id"] = 2,
                ["torch_dtype"] = "float32",
            },
        };
        writer.Tensor("model.embed_tokens.weight", w.TokenEmbedding, a.VocabSize, d);
        for (var l = 0; l < a.Layers; l++)
        {
            var p = $"model.layers.{l}.";
            writer.Tensor(p + "input_layernorm.weight", w.RmsAttention[l], d)
                .Tensor(p + "self_attn.q_proj.weight", Permute(w.Wq[l], a.Heads, d, d), d, d)
                .Tensor(p + "self_attn.k_proj.weight", Permute(w.Wk[l], a.KvHeads, kv, d), kv, d)
                .Tensor(p + "self_attn.v_proj.weight", w.Wv[l], kv, d)
                .Tensor(p + "self_attn.o_proj.weight", w.Wo[l], d, d)
                .Tensor(p + "post_attention_layernorm.weight", w.RmsFfn[l], d)
                .Tensor(p + "mlp.gate_proj.weight", w.W1[l], h, d)
                .Tensor(p + "mlp.down_proj.weight", w.W2[l], d, h)
                .Tensor(p + "mlp.up_proj.weight", w.W3[l], h, d);
        }
        writer.Tensor("model.norm.weight", w.RmsFinal, d);
        if (!tied) writer.Tensor("lm_head.weight", w.Classifier, a.VocabSize, d);
        return writer.StandInTokenizer(a.VocabSize);
    }

    /// <summary>
    /// convert_llama_weights_to_hf.py's permute(w, n_heads, dim1, dim2):
    /// w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2).
    /// </summary>
    public static float[] Permute(float[] w, int heads, int dim1, int dim2)
    {
        int half = dim1 / heads / 2;
        var result = new float[w.Length];
        for (var head = 0; head < heads; head++)
            for (var j = 0; j < half; j++)
                for (var t = 0; t < 2; t++)
                    w.AsSpan(((head * half + j) * 2 + t) * dim2, dim2)
                        .CopyTo(result.AsSpan(((head * 2 + t) * half + j) * dim2, dim2));
        return result;
    }

    /// <summary>
    /// GPT2LMHeadModel in save_pretrained's layout (Conv1D weights [in, out]); <paramref name="prefix"/> is
    /// "transformer." (saved from GPT2LMHeadModel) or "" (from GPT2Model).
    /// </summary>
    public static HfCheckpointWriter Gpt2(ModelArchitecture a, Gpt2Weights w, string directory, string prefix = "transformer.")
    {
        int d = a.DModel, h = a.HiddenDim;
        var writer = new HfCheckpointWriter(directory)
        {
            Config = new System.Text.Json.Nodes.JsonObject
            {
                ["architectures"] = new System.Text.Json.Nodes.JsonArray("GPT2LMHeadModel"),
                ["model_type"] = "gpt2",
                ["activation_function"] = "gelu_new",
                ["n_embd"] = d,
                ["n_head"] = a.Heads,
                ["n_layer"] = a.Layers,
                ["n_inner"] = h == 4 * d ? null : h,
                ["n_positions"] = a.ContextLength,
                ["n_ctx"] = a.ContextLength,
                ["vocab_size"] = a.VocabSize,
                ["layer_norm_epsilon"] = a.NormEpsilon,
                ["scale_attn_weights"] = true,
                ["tie_word_embeddings"] = a.TiedEmbeddings,
                ["bos_token_id"] = a.VocabSize - 1,
                ["eos_token_id"] = a.VocabSize - 1,
            },
        };
        writer.Tensor(prefix + "wte.weight", w.TokenEmbedding, a.VocabSize, d)
            .Tensor(prefix + "wpe.weight", w.PositionEmbedding, a.ContextLength, d);
        for (var l = 0; l < a.Layers; l++)
        {
            var p = $"{prefix}h.{l}.";
            writer.Tensor(p + "ln_1.weight", w.Ln1Weight[l], d).Tensor(p + "ln_1.bias", w.Ln1Bias[l], d)
                .Tensor(p + "attn.c_attn.weight", w.QkvWeight[l], d, 3 * d).Tensor(p + "attn.c_attn.bias", w.QkvBias[l], 3 * d)
                .Tensor(p + "attn.c_proj.weight", w.AttnOutWeight[l], d, d).Tensor(p + "attn.c_proj.bias", w.AttnOutBias[l], d)
                .Tensor(p + "ln_2.weight", w.Ln2Weight[l], d).Tensor(p + "ln_2.bias", w.Ln2Bias[l], d)
                .Tensor(p + "mlp.c_fc.weight", w.MlpInWeight[l], d, h).Tensor(p + "mlp.c_fc.bias", w.MlpInBias[l], h)
                .Tensor(p + "mlp.c_proj.weight", w.MlpOutWeight[l], h, d).Tensor(p + "mlp.c_proj.bias", w.MlpOutBias[l], d);
        }
        writer.Tensor(prefix + "ln_f.weight", w.LnFinalWeight, d).Tensor(prefix + "ln_f.bias", w.LnFinalBias, d);
        if (!a.TiedEmbeddings) writer.Tensor("lm_head.weight", w.Classifier, a.VocabSize, d);
        return writer.StandInTokenizer(a.VocabSize);
    }

    /// <summary>Random GPT-2 weights of a given shape: weights ~U(±0.2), norms around 1, biases ~U(±0.1).</summary>
    public static Gpt2Weights RandomGpt2(ModelArchitecture a, int seed)
    {
        var rng = new Random(seed);
        int d = a.DModel, h = a.HiddenDim;
        float[] R(int n, float scale = 0.2f) => Numerics.RandomVector(rng, n, scale);
        float[] Norm(int n) => R(n, 0.2f).Select(x => 1 + x).ToArray();
        float[][] L(Func<float[]> make) => Enumerable.Range(0, a.Layers).Select(_ => make()).ToArray();
        var embedding = R(a.VocabSize * d, 1f);
        return new Gpt2Weights
        {
            TokenEmbedding = embedding,
            PositionEmbedding = R(a.ContextLength * d, 0.5f),
            Ln1Weight = L(() => Norm(d)), Ln1Bias = L(() => R(d, 0.1f)),
            QkvWeight = L(() => R(d * 3 * d)), QkvBias = L(() => R(3 * d, 0.1f)),
            AttnOutWeight = L(() => R(d * d)), AttnOutBias = L(() => R(d, 0.1f)),
            Ln2Weight = L(() => Norm(d)), Ln2Bias = L(() => R(d, 0.1f)),
            MlpInWeight = L(() => R(d * h)), MlpInBias = L(() => R(h, 0.1f)),
            MlpOutWeight = L(() => R(h * d)), MlpOutBias = L(() => R(d, 0.1f)),
            LnFinalWeight = Norm(d), LnFinalBias = R(d, 0.1f),
            Classifier = a.TiedEmbeddings ? embedding : R(a.VocabSize * d, 1f),
        };
    }
}
