using System.Text.Json.Nodes;

namespace FeatureFlow.Models.HuggingFace;

/// <summary>
/// Reads a config's rotary settings: rope_theta with rope_scaling (transformers 4) or rope_parameters
/// (transformers 5, which moves rope_theta inside), resolving every default the way transformers'
/// _compute_*_parameters do, so <see cref="Export.RotaryFrequencies"/> needs nothing else. Kinds or keys it cannot
/// reproduce exactly (longrope, partial rotary, unknown keys) are refused by name.
/// </summary>
public static class HfRopeConfig
{
    public static readonly IReadOnlyList<string> SupportedTypes = ["default", "linear", "dynamic", "llama3", "yarn"];

    private static readonly Dictionary<string, string[]> KeysOf = new(StringComparer.Ordinal)
    {
        ["default"] = [],
        ["linear"] = ["factor"],
        // transformers' dynamic NTK reads only factor; original_max_position_embeddings appears in some configs.
        ["dynamic"] = ["factor", "original_max_position_embeddings"],
        ["llama3"] = ["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"],
        ["yarn"] = ["factor", "attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
            "original_max_position_embeddings", "truncate"],
    };

    /// <summary>The rotary base and the scaling (null: none) for a model whose context is max_position_embeddings.
    /// </summary>
    public static (float Theta, RopeScaling? Scaling) Read(HfConfig config, int maxPositions)
    {
        var parameters = config.Object("rope_parameters");
        var (section, scaling) = parameters is not null
            ? ("rope_parameters", parameters)
            : ("rope_scaling", config.Object("rope_scaling"));
        var theta = parameters is not null
            ? config.Number(parameters["rope_theta"], "rope_parameters.rope_theta") ?? throw config.Missing(
                "rope_parameters.rope_theta", "the rotary base")
            : config.Number("rope_theta", 10000);
        var partial = config.Number(scaling?["partial_rotary_factor"], $"{section}.partial_rotary_factor")
            ?? config.Number("partial_rotary_factor", 1);
        config.Require("partial_rotary_factor", partial, 1.0, "rotary embedding over whole heads");
        if (scaling is null) return ((float)theta, null);

        var typeNode = scaling["rope_type"] ?? scaling["type"];
        var type = typeNode is JsonValue v && v.TryGetValue<string>(out var t) ? t
            : throw config.Unsupported($"{section}.rope_type", $"one of {string.Join(", ", SupportedTypes)}", typeNode);
        if (!KeysOf.TryGetValue(type, out var keys))
            throw config.Unsupported($"{section}.rope_type", $"one of {string.Join(", ", SupportedTypes)}", typeNode);
        string[] framing = ["rope_type", "type", "rope_theta", "partial_rotary_factor"];
        foreach (var (key, _) in scaling)
            if (!keys.Contains(key) && !framing.Contains(key))
                throw new InvalidDataException($"{config.Path}: {section}.{key} is not understood for rope type '{type}' "
                    + $"(expected only {string.Join(", ", keys.DefaultIfEmpty("no parameters"))})");

        double? Number(string key) => config.Number(scaling[key], $"{section}.{key}");
        double Required(string key) => Number(key) ?? throw config.Missing($"{section}.{key}", $"a number for {type}");
        int? OriginalContext() => Number("original_max_position_embeddings") is { } o ? checked((int)o) : null;
        RopeScaling? result = type switch
        {
            "default" => null,
            "linear" => new RopeScaling { Kind = RopeScalingKind.Linear, Factor = Required("factor") },
            "dynamic" => new RopeScaling { Kind = RopeScalingKind.Dynamic, Factor = Required("factor") },
            "llama3" => new RopeScaling
            {
                Kind = RopeScalingKind.Llama3,
                Factor = Required("factor"),
                LowFreqFactor = Required("low_freq_factor"),
                HighFreqFactor = Required("high_freq_factor"),
                OriginalContextLength = OriginalContext()
                    ?? throw config.Missing($"{section}.original_max_position_embeddings", "a context length for llama3"),
            },
            _ => Yarn(config, section, scaling, Number, OriginalContext() ?? maxPositions, maxPositions),
        };
        try { result?.Validate(); }
        catch (InvalidDataException e) { throw new InvalidDataException($"{config.Path}: {e.Message}", e); }
        return ((float)theta, result);
    }

    /// <summary>transformers' _compute_yarn_parameters: its defaults, and its attention factor from mscale.</summary>
    private static RopeScaling Yarn(HfConfig config, string section, JsonObject scaling, Func<string, double?> number,
        int original, int maxPositions)
    {
        var factor = number("factor") ?? (double)maxPositions / original;
        static double MScale(double scale, double m) => scale <= 1 ? 1 : 0.1 * m * Math.Log(scale) + 1;
        var mscale = number("mscale");
        var mscaleAllDim = number("mscale_all_dim");
        // transformers tests truthiness: a zero mscale or mscale_all_dim falls back to the plain factor.
        var attention = number("attention_factor") ?? (mscale is { } m && m != 0 && mscaleAllDim is { } all && all != 0
            ? MScale(factor, m) / MScale(factor, all)
            : MScale(factor, 1));
        var truncate = scaling["truncate"] switch
        {
            null => true,
            JsonValue v when v.TryGetValue<bool>(out var b) => b,
            var other => throw config.Unsupported($"{section}.truncate", "true or false", other),
        };
        // transformers' `or` defaults: a zero beta also means the default.
        double OrDefault(double? value, double fallback) => value is { } x && x != 0 ? x : fallback;
        return new RopeScaling
        {
            Kind = RopeScalingKind.Yarn,
            Factor = factor,
            OriginalContextLength = original,
            BetaFast = OrDefault(number("beta_fast"), 32),
            BetaSlow = OrDefault(number("beta_slow"), 1),
            Truncate = truncate,
            AttentionFactor = attention,
        };
    }
}
