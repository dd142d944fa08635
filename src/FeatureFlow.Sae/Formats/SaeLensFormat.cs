using System.Text.Json.Nodes;
using FeatureFlow.Models;
using FeatureFlow.Models.Formats;

namespace FeatureFlow.Sae.Formats;

/// <summary>
/// SAELens folders: <c>cfg.json</c> (d_in, d_sae, architecture, hook_name, model_name,
/// apply_b_dec_to_input, …; newer versions nest some keys under <c>metadata</c>) and
/// <c>sae_weights.safetensors</c> with W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec and, for
/// JumpReLU, threshold (or log_threshold). TopK SAEs written here also carry the per-feature
/// thresholds the steering hook uses, in <c>featureflow_thresholds.safetensors</c>.
/// </summary>
public static class SaeLensFormat
{
    public const string ConfigFile = "cfg.json";
    public const string WeightsFile = "sae_weights.safetensors";
    public const string ThresholdsFile = "featureflow_thresholds.safetensors";

    public static void Write(SparseAutoencoder sae, string directory, bool asJumpRelu = false)
    {
        Directory.CreateDirectory(directory);
        var architecture = asJumpRelu ? "jumprelu" : sae.Activation switch
        {
            SaeActivation.Relu => "standard",
            SaeActivation.TopK => "topk",
            _ => "jumprelu",
        };
        var metadata = new JsonObject();
        foreach (var (k, v) in sae.Metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal)) metadata[k] = v;
        var cfg = new JsonObject
        {
            ["architecture"] = architecture,
            ["d_in"] = sae.DIn,
            ["d_sae"] = sae.DSae,
            ["hook_name"] = sae.Site.HookName,
            ["hook_layer"] = sae.Site.Layer,
            ["model_name"] = sae.ModelName,
            ["apply_b_dec_to_input"] = sae.ApplyDecoderBiasToInput,
            ["normalize_activations"] = "none",
            ["dtype"] = "float32",
            ["device"] = "cpu",
            ["metadata"] = metadata,
        };
        if (architecture == "topk")
        {
            cfg["k"] = sae.K;
            cfg["activation_fn"] = "topk";
            cfg["activation_fn_kwargs"] = new JsonObject { ["k"] = sae.K };
        }
        File.WriteAllText(Path.Combine(directory, ConfigFile), cfg.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }) + "\n");

        var writer = new SafeTensorsWriter()
            .AddFloat32("W_enc", Matrix.Transpose(sae.Encoder, sae.DSae, sae.DIn), sae.DIn, sae.DSae)
            .AddFloat32("W_dec", sae.Decoder, sae.DSae, sae.DIn)
            .AddFloat32("b_enc", sae.EncoderBias, sae.DSae)
            .AddFloat32("b_dec", sae.DecoderBias, sae.DIn);
        if (architecture == "jumprelu") writer.AddFloat32("threshold", sae.Threshold, sae.DSae);
        writer.Write(Path.Combine(directory, WeightsFile));
        if (architecture == "topk")
            new SafeTensorsWriter().AddFloat32("threshold", sae.Threshold, sae.DSae).Write(Path.Combine(directory, ThresholdsFile));
    }

    /// <summary>
    /// Rewrites only a TopK folder's hook thresholds (<see cref="ThresholdsFile"/>) and puts
    /// <see cref="SparseAutoencoder.Metadata"/> into cfg.json's metadata; every other key and the weights stay as
    /// they are.
    /// </summary>
    public static void WriteThresholds(SparseAutoencoder sae, string directory)
    {
        if (sae.Activation != SaeActivation.TopK)
            throw new ArgumentException($"{directory}: only TopK folders keep separate hook thresholds");
        var cfgPath = Path.Combine(directory, ConfigFile);
        var cfg = JsonNode.Parse(File.ReadAllText(cfgPath))?.AsObject()
            ?? throw new InvalidDataException($"{cfgPath}: empty");
        if (cfg["metadata"] is not JsonObject metadata) cfg["metadata"] = metadata = new JsonObject();
        foreach (var (k, v) in sae.Metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal)) metadata[k] = v;
        new SafeTensorsWriter().AddFloat32("threshold", sae.Threshold, sae.DSae)
            .Write(Path.Combine(directory, ThresholdsFile));
        var indented = new System.Text.Json.JsonSerializerOptions { WriteIndented = true };
        File.WriteAllText(cfgPath, cfg.ToJsonString(indented) + "\n");
    }

    public static SparseAutoencoder Read(string directory)
    {
        var cfgPath = Path.Combine(directory, ConfigFile);
        if (!File.Exists(cfgPath)) throw new FileNotFoundException($"{directory}: not a SAELens folder ({ConfigFile} is missing)", cfgPath);
        JsonObject cfg;
        try { cfg = JsonNode.Parse(File.ReadAllText(cfgPath))?.AsObject() ?? throw new InvalidDataException($"{cfgPath}: empty"); }
        catch (System.Text.Json.JsonException e) { throw new InvalidDataException($"{cfgPath}: malformed JSON ({e.Message})", e); }
        var meta = cfg["metadata"] as JsonObject;
        JsonNode? Get(string key) => cfg[key] ?? meta?[key];
        int RequireInt(string key) => Get(key)?.GetValue<int>() ?? throw new InvalidDataException($"{cfgPath}: '{key}' is missing");

        var dIn = RequireInt("d_in");
        var dSae = RequireInt("d_sae");
        var hook = Get("hook_name")?.GetValue<string>() ?? throw new InvalidDataException($"{cfgPath}: 'hook_name' is missing");
        if (!Site.TryParse(hook, out var site, out var error)) throw new InvalidDataException($"{cfgPath}: hook_name {error}");
        var architecture = (Get("architecture")?.GetValue<string>() ?? "standard").ToLowerInvariant();
        var activation = architecture switch
        {
            "standard" or "relu" => SaeActivation.Relu,
            "topk" => SaeActivation.TopK,
            "jumprelu" => SaeActivation.JumpRelu,
            _ => throw new InvalidDataException($"{cfgPath}: architecture '{architecture}' is not supported (standard, topk, jumprelu)"),
        };
        var k = activation == SaeActivation.TopK
            ? Get("k")?.GetValue<int>() ?? Get("activation_fn_kwargs")?["k"]?.GetValue<int>() ?? throw new InvalidDataException($"{cfgPath}: a topk SAE needs 'k'")
            : 0;
        var sae = new SparseAutoencoder(dIn, dSae, activation, site)
        {
            K = k,
            ApplyDecoderBiasToInput = Get("apply_b_dec_to_input")?.GetValue<bool>() ?? true,
            ModelName = Get("model_name")?.GetValue<string>() ?? "",
        };
        if (meta is not null)
            foreach (var (key, value) in meta)
                if (value is JsonValue v && v.TryGetValue<string>(out var text)) sae.Metadata[key] = text;

        var weightsPath = Path.Combine(directory, WeightsFile);
        var weights = SafeTensorsFile.Read(weightsPath);
        CopyChecked(weights, "W_enc", [dIn, dSae], m => Matrix.Transpose(m, dIn, dSae), sae.Encoder);
        CopyChecked(weights, "W_dec", [dSae, dIn], null, sae.Decoder);
        CopyChecked(weights, "b_enc", [dSae], null, sae.EncoderBias);
        CopyChecked(weights, "b_dec", [dIn], null, sae.DecoderBias);
        if (activation == SaeActivation.JumpRelu)
        {
            if (weights.Tensors.ContainsKey("threshold")) CopyChecked(weights, "threshold", [dSae], null, sae.Threshold);
            else if (weights.Tensors.ContainsKey("log_threshold"))
            {
                CopyChecked(weights, "log_threshold", [dSae], null, sae.Threshold);
                for (var j = 0; j < dSae; j++) sae.Threshold[j] = MathF.Exp(sae.Threshold[j]);
            }
            else throw new InvalidDataException($"{weightsPath}: a jumprelu SAE needs 'threshold' or 'log_threshold'");
        }
        var thresholds = Path.Combine(directory, ThresholdsFile);
        if (activation == SaeActivation.TopK && File.Exists(thresholds))
            CopyChecked(SafeTensorsFile.Read(thresholds), "threshold", [dSae], null, sae.Threshold);
        return sae;
    }

    /// <summary>Reads a tensor, checks its shape, and copies it (transformed if asked) into <paramref name="target"/>.</summary>
    internal static void CopyChecked(SafeTensorsFile file, string name, long[] shape, Func<float[], float[]>? transform, float[] target)
    {
        var entry = file.Entry(name);
        if (!entry.Shape.SequenceEqual(shape))
            throw new InvalidDataException($"{file.Path}: '{name}' has shape [{string.Join(", ", entry.Shape)}], expected [{string.Join(", ", shape)}]");
        var values = file.GetFloat32(name);
        (transform is null ? values : transform(values)).CopyTo(target, 0);
    }
}
