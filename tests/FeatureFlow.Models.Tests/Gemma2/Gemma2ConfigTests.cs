using System.Text.Json;
using System.Text.Json.Nodes;
using FeatureFlow.Models.Folder;
using FeatureFlow.Models.Gemma2;

namespace FeatureFlow.Models.Tests.Gemma2;

public class Gemma2ConfigTests
{
    /// <summary>google/gemma-2-2b's published config.json (transformers 4.42.4), field for field.</summary>
    private const string Gemma2_2b = """
        {
          "architectures": ["Gemma2ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
          "attn_logit_softcapping": 50.0, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": 1,
          "final_logit_softcapping": 30.0, "head_dim": 256, "hidden_act": "gelu_pytorch_tanh",
          "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2304, "initializer_range": 0.02,
          "intermediate_size": 9216, "max_position_embeddings": 8192, "model_type": "gemma2",
          "num_attention_heads": 8, "num_hidden_layers": 26, "num_key_value_heads": 4, "pad_token_id": 0,
          "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 4096,
          "torch_dtype": "float32", "transformers_version": "4.42.4", "use_cache": true, "vocab_size": 256000
        }
        """;

    [Fact]
    public void Reads_gemma_2_2b_config_with_its_head_dim_window_caps_and_alternating_layers()
    {
        var c = Gemma2Config.Parse(Gemma2_2b, "gemma-2-2b/config.json");
        var a = c.Architecture;
        Assert.Equal(("gemma2", 2304, 9216, 26, 8, 4, 256000, 8192),
            (a.Family, a.DModel, a.HiddenDim, a.Layers, a.Heads, a.KvHeads, a.VocabSize, a.ContextLength));
        Assert.Equal(256, a.HeadSize); // not 2304 / 8 = 288
        Assert.Equal(4 * 256, a.KvDim);
        Assert.Equal((NormKind.RmsNorm, MlpKind.GeGlu, RotaryConvention.Half), (a.Norm, a.Mlp, a.Rotary));
        Assert.Equal((1e-6f, 10000f, true), (a.NormEpsilon, a.RotaryTheta, a.TiedEmbeddings));
        Assert.Equal((256.0, 50f, 30f, 4096), (c.QueryPreAttentionScalar, c.AttentionLogitSoftcap, c.FinalLogitSoftcap,
            c.SlidingWindow));
        Assert.Equal(1f / 16f, c.QueryScale);
        Assert.Equal(48f, c.EmbeddingScale);
        // transformers' Gemma2: is_sliding = not bool(layer_idx % 2).
        Assert.Equal(Enumerable.Range(0, 26).Select(l => l % 2 == 0), c.SlidingLayers);
    }

    [Fact]
    public void Null_soft_caps_turn_them_off_and_layer_types_override_the_alternation()
    {
        var json = TinyGemma2.Config();
        json["attn_logit_softcapping"] = null;
        json["final_logit_softcapping"] = null;
        json["layer_types"] =
            new JsonArray("full_attention", "sliding_attention", "sliding_attention", "full_attention");
        var c = Gemma2Config.Parse(json.ToJsonString(), "config.json");
        Assert.Null(c.AttentionLogitSoftcap);
        Assert.Null(c.FinalLogitSoftcap);
        Assert.Equal([false, true, true, false], c.SlidingLayers);
    }

    public static TheoryData<string, string?, string> BadFields() => new()
    {
        { "query_pre_attn_scalar", null, "config.json: query_pre_attn_scalar: missing" },
        { "query_pre_attn_scalar", "0", "query_pre_attn_scalar: 0 is not a positive number" },
        {
            "hidden_activation", "\"gelu\"",
            "hidden_activation: 'gelu' is not supported (Gemma 2 uses 'gelu_pytorch_tanh')"
        },
        { "hidden_activation", "\"silu\"", "hidden_activation: 'silu' is not supported" },
        { "attn_logit_softcapping", null, "attn_logit_softcapping: missing" },
        { "final_logit_softcapping", "-30", "final_logit_softcapping: -30 is not a positive number" },
        { "sliding_window", null, "sliding_window: missing" },
        { "head_dim", "\"16\"", "head_dim: \"16\" is not a positive integer" },
        { "model_type", "\"llama\"", "model_type: 'llama' is not 'gemma2'" },
        { "attention_bias", "true", "attention_bias: true is not supported" },
        {
            "rope_scaling", "{\"rope_type\": \"linear\", \"factor\": 2.0}",
            "rope_scaling: rope scaling is not supported"
        },
        { "layer_types", "[\"sliding_attention\"]", "layer_types: 1 entries for 4 layers" },
        { "layer_types", "[\"sliding_attention\", \"chunked_attention\", \"full_attention\", \"full_attention\"]",
            "layer_types[1]: 'chunked_attention' is neither 'sliding_attention' nor 'full_attention'" },
        { "num_key_value_heads", "3", "heads 4 is not a multiple of kv_heads 3" },
    };

    [Theory]
    [MemberData(nameof(BadFields))]
    public void A_missing_or_unsupported_field_is_an_error_naming_it(string field, string? value, string expected)
    {
        var json = TinyGemma2.Config();
        if (value is null) json.Remove(field);
        else json[field] = JsonNode.Parse(value);
        var e = Assert.Throws<InvalidDataException>(() => Gemma2Config.Parse(json.ToJsonString(), "config.json"));
        Assert.Contains(expected, e.Message);
        Assert.StartsWith("config.json: ", e.Message);
    }

    [Fact]
    public void Hidden_act_stands_in_for_a_missing_hidden_activation()
    {
        var json = TinyGemma2.Config();
        json.Remove("hidden_activation");
        Assert.Equal(TinyGemma2.HeadDim, Gemma2Config.Parse(json.ToJsonString(), "config.json").Architecture.HeadSize);
        json["hidden_act"] = "gelu";
        var e = Assert.Throws<InvalidDataException>(() => Gemma2Config.Parse(json.ToJsonString(), "config.json"));
        Assert.Contains("'gelu' is not supported", e.Message);
    }

    [Fact]
    public void A_tensor_whose_shape_disagrees_with_the_config_is_named_with_both_shapes()
    {
        var dir = Path.Combine(Path.GetTempPath(), $"featureflow-gemma2-{Guid.NewGuid():N}");
        try
        {
            var json = TinyGemma2.Config();
            json["head_dim"] = 8; // the weights are written for 16
            TinyGemma2.Write(dir, TinyGemma2.Config());
            File.WriteAllText(Path.Combine(dir, "config.json"), json.ToJsonString());
            var e = Assert.Throws<InvalidDataException>(() => TinyGemma2.Read(dir));
            Assert.Contains("tensor 'model.layers.0.self_attn.q_proj.weight' has shape [64, 32]; "
                + "the config implies [32, 32]", e.Message);

            json["head_dim"] = 16;
            json["tie_word_embeddings"] = false; // then lm_head.weight must be there
            File.WriteAllText(Path.Combine(dir, "config.json"), json.ToJsonString());
            e = Assert.Throws<InvalidDataException>(() => TinyGemma2.Read(dir));
            Assert.Contains("no tensor 'lm_head.weight'", e.Message);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void Head_dim_round_trips_through_the_manifest_and_is_left_out_when_absent()
    {
        var gemma = Gemma2Config.Parse(Gemma2_2b, "config.json").Architecture;
        var json = JsonSerializer.Serialize(gemma, ModelManifest.Json);
        Assert.Contains("\"head_dim\": 256", json);
        Assert.Equal(gemma, JsonSerializer.Deserialize<ModelArchitecture>(json, ModelManifest.Json));
        var llama = gemma with { Family = "llama", HeadDim = null };
        Assert.DoesNotContain("head_dim", JsonSerializer.Serialize(llama, ModelManifest.Json));
        Assert.Equal(288, llama.HeadSize);
    }
}
