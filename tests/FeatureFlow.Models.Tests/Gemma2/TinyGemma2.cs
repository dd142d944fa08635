using System.Text.Json.Nodes;
using FeatureFlow.Models.Formats;
using FeatureFlow.Models.Gemma2;

namespace FeatureFlow.Models.Tests.Gemma2;

/// <summary>
/// A random-weight Gemma 2 checkpoint small enough to run the reference pass in milliseconds, shaped so that every
/// Gemma-only feature matters: head_dim 16 ≠ d_model / heads (8), query_pre_attn_scalar 24 ≠ head_dim, a 4-token
/// sliding window on layers 0 and 2 (shorter than the 12-token test sequence), and soft-caps small enough (2 on
/// attention scores, 3 on logits) that tanh bends the values the weights produce.
/// </summary>
public static class TinyGemma2
{
    public const int DModel = 32, Heads = 4, KvHeads = 2, HeadDim = 16, Layers = 4, Hidden = 48, Vocab = 64;
    public const int Context = 32, Window = 4;

    /// <summary>Twelve tokens: three times the window.</summary>
    public static readonly int[] Sequence = [5, 17, 42, 3, 60, 8, 33, 21, 9, 50, 14, 27];

    /// <summary>config.json as transformers writes it for Gemma2ForCausalLM.</summary>
    public static JsonObject Config() => new()
    {
        ["architectures"] = new JsonArray("Gemma2ForCausalLM"),
        ["attention_bias"] = false,
        ["attention_dropout"] = 0.0,
        ["attn_logit_softcapping"] = 2.0,
        ["bos_token_id"] = 2,
        ["cache_implementation"] = "hybrid",
        ["eos_token_id"] = 1,
        ["final_logit_softcapping"] = 3.0,
        ["head_dim"] = HeadDim,
        ["hidden_act"] = "gelu_pytorch_tanh",
        ["hidden_activation"] = "gelu_pytorch_tanh",
        ["hidden_size"] = DModel,
        ["initializer_range"] = 0.02,
        ["intermediate_size"] = Hidden,
        ["max_position_embeddings"] = Context,
        ["model_type"] = "gemma2",
        ["num_attention_heads"] = Heads,
        ["num_hidden_layers"] = Layers,
        ["num_key_value_heads"] = KvHeads,
        ["pad_token_id"] = 0,
        ["query_pre_attn_scalar"] = 24,
        ["rms_norm_eps"] = 1e-6,
        ["rope_theta"] = 10000.0,
        ["sliding_window"] = Window,
        ["torch_dtype"] = "float32",
        ["transformers_version"] = "4.42.4",
        ["use_cache"] = true,
        ["vocab_size"] = Vocab,
    };

    /// <summary>Writes config.json and model.safetensors (transformers' tensor names) into <paramref name="dir"/>.
    /// </summary>
    public static void Write(string dir, JsonObject config, int seed = 7)
    {
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "config.json"), config.ToJsonString());
        var rng = new Random(seed);
        var writer = new SafeTensorsWriter();
        void Add(string name, float scale, params long[] shape)
        {
            var count = (int)shape.Aggregate(1L, (a, b) => a * b);
            writer.AddFloat32(name, Numerics.RandomVector(rng, count, scale), shape);
        }
        const int q = Heads * HeadDim, kv = KvHeads * HeadDim;
        Add("model.embed_tokens.weight", 1f, Vocab, DModel);
        for (var l = 0; l < Layers; l++)
        {
            var p = $"model.layers.{l}.";
            Add(p + "input_layernorm.weight", 0.3f, DModel);
            // Large enough that scaled scores reach the attention soft-cap's bend (|s| ≈ 2).
            Add(p + "self_attn.q_proj.weight", 0.5f, q, DModel);
            Add(p + "self_attn.k_proj.weight", 0.5f, kv, DModel);
            Add(p + "self_attn.v_proj.weight", 0.3f, kv, DModel);
            Add(p + "self_attn.o_proj.weight", 0.3f, DModel, q);
            Add(p + "post_attention_layernorm.weight", 0.3f, DModel);
            Add(p + "pre_feedforward_layernorm.weight", 0.3f, DModel);
            Add(p + "mlp.gate_proj.weight", 0.4f, Hidden, DModel);
            Add(p + "mlp.up_proj.weight", 0.4f, Hidden, DModel);
            Add(p + "mlp.down_proj.weight", 0.3f, DModel, Hidden);
            Add(p + "post_feedforward_layernorm.weight", 0.3f, DModel);
        }
        Add("model.norm.weight", 0.3f, DModel);
        writer.Write(Path.Combine(dir, "model.safetensors"));
    }

    /// <summary>Reads a folder <see cref="Write"/> made through <see cref="Gemma2Checkpoint"/>.</summary>
    public static Gemma2Checkpoint Read(string dir)
    {
        var file = SafeTensorsFile.Read(Path.Combine(dir, "model.safetensors"));
        return Gemma2Checkpoint.Read(File.ReadAllText(Path.Combine(dir, "config.json")),
            name => (file.GetFloat32(name), file.Entry(name).Shape), dir);
    }
}
