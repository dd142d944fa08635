using System.Text.Json;

namespace FeatureFlow.Models.Gemma2;

/// <summary>
/// A Gemma 2 model's shape (<see cref="Architecture"/>, family "gemma2") and the values only Gemma 2 has, as
/// Hugging Face transformers' Gemma2 code reads them from config.json. The math they control:
/// attention scores are (q·k)·query_pre_attn_scalar^-1/2, soft-capped as c·tanh(s/c) before the mask; sliding layers
/// let a query see the last <see cref="SlidingWindow"/> positions only (itself included); the final logits are
/// soft-capped the same way.
/// </summary>
public sealed record Gemma2Config
{
    public const string Family = "gemma2";
    public const string GeluTanh = "gelu_pytorch_tanh";

    public required ModelArchitecture Architecture { get; init; }

    /// <summary>query_pre_attn_scalar: scores are scaled by its inverse square root (not by head_dim's).</summary>
    public required double QueryPreAttentionScalar { get; init; }

    /// <summary>attn_logit_softcapping; null: attention scores are not capped.</summary>
    public required float? AttentionLogitSoftcap { get; init; }

    /// <summary>final_logit_softcapping; null: logits are not capped.</summary>
    public required float? FinalLogitSoftcap { get; init; }

    /// <summary>sliding_window: how many positions (the query's own included) a sliding layer's query sees.</summary>
    public required int SlidingWindow { get; init; }

    /// <summary>
    /// Per layer, whether it uses the sliding window. Gemma 2 alternates, starting with a sliding layer 0
    /// (transformers: <c>is_sliding = not bool(layer_idx % 2)</c>); a config's layer_types overrides that.
    /// </summary>
    public required IReadOnlyList<bool> SlidingLayers { get; init; }

    /// <summary>The factor applied to q·k, in float32 as torch applies a Python float to a float32 tensor.</summary>
    public float QueryScale => (float)Math.Pow(QueryPreAttentionScalar, -0.5);

    /// <summary>The embedding is multiplied by √d_model in the model's dtype (float32 here, the graph's).</summary>
    public float EmbeddingScale => (float)Math.Sqrt(Architecture.DModel);

    public bool IsSliding(int layer) => SlidingLayers[layer];

    public void Validate()
    {
        Architecture.Validate();
        if (Architecture.Family != Family) throw Invalid("family", $"'{Architecture.Family}' is not '{Family}'");
        if (!(QueryPreAttentionScalar > 0) || double.IsInfinity(QueryPreAttentionScalar))
            throw Invalid("query_pre_attn_scalar", $"{QueryPreAttentionScalar} is not a positive number");
        if (AttentionLogitSoftcap is { } a && !(a > 0 && float.IsFinite(a)))
            throw Invalid("attn_logit_softcapping", $"{a} is not a positive number (null turns soft-capping off)");
        if (FinalLogitSoftcap is { } f && !(f > 0 && float.IsFinite(f)))
            throw Invalid("final_logit_softcapping", $"{f} is not a positive number (null turns soft-capping off)");
        if (SlidingLayers.Count != Architecture.Layers)
            throw Invalid("layer_types", $"{SlidingLayers.Count} entries for {Architecture.Layers} layers");
        if (SlidingLayers.Contains(true) && SlidingWindow < 1)
            throw Invalid("sliding_window", $"{SlidingWindow} is not a positive window");
    }

    private static InvalidDataException Invalid(string field, string problem) => new($"{field}: {problem}");

    /// <summary>
    /// Reads a Hugging Face Gemma2ForCausalLM config.json. Every value that changes the math must be present
    /// (no silent defaults); the two soft-caps may be null, which turns them off, as in transformers. Errors name
    /// <paramref name="source"/> and the field.
    /// </summary>
    public static Gemma2Config Parse(string json, string source)
    {
        JsonElement root;
        try
        {
            using var doc = JsonDocument.Parse(json);
            root = doc.RootElement.Clone();
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{source}: not valid JSON ({e.Message})", e);
        }
        try
        {
            return Read(new ConfigReader(root));
        }
        catch (InvalidDataException e)
        {
            throw new InvalidDataException($"{source}: {e.Message}", e);
        }
    }

    private static Gemma2Config Read(ConfigReader c)
    {
        var modelType = c.String("model_type");
        if (modelType != Family) throw Invalid("model_type", $"'{modelType}' is not '{Family}'");
        var activation = c.Has("hidden_activation") ? c.String("hidden_activation") : c.String("hidden_act");
        if (activation != GeluTanh)
            throw Invalid("hidden_activation", $"'{activation}' is not supported (Gemma 2 uses '{GeluTanh}')");
        if (c.Has("attention_bias") && c.Bool("attention_bias"))
            throw Invalid("attention_bias", "true is not supported (Gemma 2 has no attention biases)");
        if (c.Has("rope_scaling") && !c.IsNull("rope_scaling"))
            throw Invalid("rope_scaling", "rope scaling is not supported for Gemma 2");

        var layers = c.PositiveInt("num_hidden_layers");
        var architecture = new ModelArchitecture
        {
            Family = Family,
            DModel = c.PositiveInt("hidden_size"),
            HiddenDim = c.PositiveInt("intermediate_size"),
            Layers = layers,
            Heads = c.PositiveInt("num_attention_heads"),
            KvHeads = c.PositiveInt("num_key_value_heads"),
            HeadDim = c.PositiveInt("head_dim"),
            VocabSize = c.PositiveInt("vocab_size"),
            ContextLength = c.PositiveInt("max_position_embeddings"),
            Norm = NormKind.RmsNorm,
            NormEpsilon = c.PositiveFloat("rms_norm_eps"),
            Mlp = MlpKind.GeGlu,
            Positions = PositionEmbedding.Rotary,
            Rotary = RotaryConvention.Half,
            RotaryTheta = c.PositiveFloat("rope_theta"),
            TiedEmbeddings = !c.Has("tie_word_embeddings") || c.Bool("tie_word_embeddings"),
        };
        var sliding = c.Has("layer_types")
            ? c.Strings("layer_types").Select((t, i) => t switch
            {
                "sliding_attention" => true,
                "full_attention" => false,
                _ => throw Invalid($"layer_types[{i}]", $"'{t}' is neither 'sliding_attention' nor 'full_attention'"),
            }).ToArray()
            : Enumerable.Range(0, layers).Select(l => l % 2 == 0).ToArray();
        var config = new Gemma2Config
        {
            Architecture = architecture,
            QueryPreAttentionScalar = c.PositiveDouble("query_pre_attn_scalar"),
            AttentionLogitSoftcap = c.OptionalPositiveFloat("attn_logit_softcapping"),
            FinalLogitSoftcap = c.OptionalPositiveFloat("final_logit_softcapping"),
            SlidingWindow = sliding.Contains(true) ? c.PositiveInt("sliding_window") : 0,
            SlidingLayers = sliding,
        };
        config.Validate();
        return config;
    }

    /// <summary>Typed reads of config.json fields; each failure names the field and what it found.</summary>
    private readonly struct ConfigReader(JsonElement root)
    {
        public bool Has(string field) => root.TryGetProperty(field, out _);

        public bool IsNull(string field) => Get(field).ValueKind == JsonValueKind.Null;

        private JsonElement Get(string field) =>
            root.TryGetProperty(field, out var value) ? value : throw Invalid(field, "missing");

        public string String(string field)
        {
            var v = Get(field);
            return v.ValueKind == JsonValueKind.String
                ? v.GetString()!
                : throw Invalid(field, $"{v.GetRawText()} is not a string");
        }

        public bool Bool(string field)
        {
            var v = Get(field);
            return v.ValueKind is JsonValueKind.True or JsonValueKind.False
                ? v.GetBoolean()
                : throw Invalid(field, $"{v.GetRawText()} is not true or false");
        }

        public string[] Strings(string field)
        {
            var v = Get(field);
            if (v.ValueKind != JsonValueKind.Array) throw Invalid(field, $"{v.GetRawText()} is not a list");
            return v.EnumerateArray().Select((e, i) => e.ValueKind == JsonValueKind.String
                ? e.GetString()!
                : throw Invalid($"{field}[{i}]", $"{e.GetRawText()} is not a string")).ToArray();
        }

        public int PositiveInt(string field)
        {
            var v = Get(field);
            return v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out var i) && i > 0
                ? i
                : throw Invalid(field, $"{v.GetRawText()} is not a positive integer");
        }

        public double PositiveDouble(string field)
        {
            var v = Get(field);
            return v.ValueKind == JsonValueKind.Number && v.GetDouble() is var d && d > 0 && double.IsFinite(d)
                ? d
                : throw Invalid(field, $"{v.GetRawText()} is not a positive number");
        }

        public float PositiveFloat(string field) => (float)PositiveDouble(field);

        /// <summary>A positive number, or null (present and null: the feature is off).</summary>
        public float? OptionalPositiveFloat(string field) =>
            IsNull(field) ? null : PositiveFloat(field);
    }
}
