using System.Text.Json.Nodes;
using FeatureFlow.Models;
using FeatureFlow.Models.Formats;

namespace FeatureFlow.Sae.Formats;

public enum SaeSourceFormat { SaeLens, GemmaScope, Sparsify }

/// <summary>
/// Reads public SAE formats into <see cref="SparseAutoencoder"/>: SAELens folders, Gemma Scope
/// <c>params.npz</c> (encode = ReLU(pre)·[pre &gt; θ], no b_dec subtraction) and EleutherAI sparsify
/// folders (<c>cfg.json</c> + <c>sae.safetensors</c>; encode subtracts b_dec, then TopK).
/// Formats without a hook name take <paramref name="site"/>.
/// </summary>
public static partial class SaeImport
{
    public static SparseAutoencoder Read(SaeSourceFormat format, string path, Site? site, string modelName) => format switch
    {
        SaeSourceFormat.SaeLens => SaeLensFormat.Read(path),
        SaeSourceFormat.GemmaScope => ReadGemmaScope(path, GemmaScopeSite(path, site), modelName),
        SaeSourceFormat.Sparsify => ReadSparsify(path, site ?? throw new ArgumentException("sparsify folders name hookpoints of their own: give the site"), modelName),
        _ => throw new ArgumentOutOfRangeException(nameof(format)),
    };

    /// <summary>
    /// The site a Gemma Scope SAE reads, from its release path (<c>gemma-scope-2b-pt-res/layer_20/width_16k/…</c>):
    /// <c>-res</c> SAEs read the output of block N (<c>blocks.N.hook_resid_post</c>), <c>-mlp</c> SAEs the MLP's
    /// contribution (<c>blocks.N.hook_mlp_out</c>). <c>-att</c> SAEs read the concatenated head outputs before the
    /// output projection (TransformerLens's hook_z), which is not a steering site, so they are refused. A given
    /// <paramref name="site"/> wins when the path says nothing, and must agree with the path when it does.
    /// </summary>
    public static Site GemmaScopeSite(string path, Site? site)
    {
        var parts = Path.GetFullPath(path).Split(Path.DirectorySeparatorChar, StringSplitOptions.RemoveEmptyEntries);
        var layer = parts.Select(p => LayerFolder().Match(p)).LastOrDefault(m => m.Success);
        var release = parts.Select(p => ReleaseFolder().Match(p)).LastOrDefault(m => m.Success);
        if (release?.Groups[1].Value == "att")
            throw new InvalidDataException($"{path}: Gemma Scope attention SAEs (-att) read hook_z, the head outputs before "
                + "the output projection, which is not a steering site; use a -res or -mlp SAE");
        if (layer is null || release is null)
            return site ?? throw new ArgumentException($"{path}: the path names no Gemma Scope release and layer "
                + "(…/gemma-scope-…-res|mlp/layer_N/…): give the site");
        var kind = release.Groups[1].Value == "res" ? SiteKind.ResidPost : SiteKind.MlpOut;
        var inferred = new Site(int.Parse(layer.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture), kind);
        if (site is { } given && given != inferred)
            throw new ArgumentException($"{path}: the Gemma Scope path says {inferred}, but the site given is {given}");
        return inferred;
    }

    [System.Text.RegularExpressions.GeneratedRegex(@"^layer_(\d{1,6})$")]
    private static partial System.Text.RegularExpressions.Regex LayerFolder();

    [System.Text.RegularExpressions.GeneratedRegex(@"^gemma-scope-.*-(res|mlp|att)(-canonical)?$")]
    private static partial System.Text.RegularExpressions.Regex ReleaseFolder();

    public static SparseAutoencoder ReadGemmaScope(string path, Site site, string modelName)
    {
        var file = Directory.Exists(path) ? Path.Combine(path, "params.npz") : path;
        var arrays = Npy.ReadNpz(file);
        Npy.Array Get(string name) => arrays.TryGetValue(name, out var a) ? a : throw new InvalidDataException($"{file}: '{name}' is missing (has: {string.Join(", ", arrays.Keys)})");
        var wEnc = Get("W_enc");
        if (wEnc.Shape.Length != 2) throw new InvalidDataException($"{file}: W_enc must be 2-D [d_in, d_sae]");
        int dIn = (int)wEnc.Shape[0], dSae = (int)wEnc.Shape[1];
        var sae = new SparseAutoencoder(dIn, dSae, SaeActivation.JumpRelu, site) { ApplyDecoderBiasToInput = false, ModelName = modelName };
        Copy(file, "W_enc", wEnc, [dIn, dSae], sae.Encoder, transpose: true);
        Copy(file, "W_dec", Get("W_dec"), [dSae, dIn], sae.Decoder);
        Copy(file, "b_enc", Get("b_enc"), [dSae], sae.EncoderBias);
        Copy(file, "b_dec", Get("b_dec"), [dIn], sae.DecoderBias);
        Copy(file, "threshold", Get("threshold"), [dSae], sae.Threshold);
        sae.Metadata["imported_from"] = "gemma-scope params.npz";
        return sae;
    }

    public static SparseAutoencoder ReadSparsify(string directory, Site site, string modelName)
    {
        var cfgPath = Path.Combine(directory, "cfg.json");
        if (!File.Exists(cfgPath)) throw new FileNotFoundException($"{directory}: not a sparsify folder (cfg.json is missing)", cfgPath);
        var cfg = JsonNode.Parse(File.ReadAllText(cfgPath))?.AsObject() ?? throw new InvalidDataException($"{cfgPath}: empty");
        var k = cfg["k"]?.GetValue<int>() ?? throw new InvalidDataException($"{cfgPath}: 'k' is missing");
        var weights = SafeTensorsFile.Read(Path.Combine(directory, "sae.safetensors"));
        var encoder = weights.Entry("encoder.weight");
        if (encoder.Shape.Length != 2) throw new InvalidDataException($"{weights.Path}: encoder.weight must be 2-D [num_latents, d_in]");
        int dSae = (int)encoder.Shape[0], dIn = (int)encoder.Shape[1];
        if (cfg["d_in"]?.GetValue<int>() is { } cfgDIn && cfgDIn != dIn) throw new InvalidDataException($"{cfgPath}: d_in {cfgDIn} disagrees with encoder.weight [{dSae}, {dIn}]");
        if (cfg["num_latents"]?.GetValue<int>() is { } latents && latents != 0 && latents != dSae) throw new InvalidDataException($"{cfgPath}: num_latents {latents} disagrees with encoder.weight [{dSae}, {dIn}]");
        var sae = new SparseAutoencoder(dIn, dSae, SaeActivation.TopK, site) { K = k, ApplyDecoderBiasToInput = true, ModelName = modelName };
        SaeLensFormat.CopyChecked(weights, "encoder.weight", [dSae, dIn], null, sae.Encoder);
        SaeLensFormat.CopyChecked(weights, "encoder.bias", [dSae], null, sae.EncoderBias);
        SaeLensFormat.CopyChecked(weights, "W_dec", [dSae, dIn], null, sae.Decoder);
        SaeLensFormat.CopyChecked(weights, "b_dec", [dIn], null, sae.DecoderBias);
        sae.Metadata["imported_from"] = "eleutherai sparsify";
        return sae;
    }

    private static void Copy(string file, string name, Npy.Array array, long[] shape, float[] target, bool transpose = false)
    {
        if (!array.Shape.SequenceEqual(shape))
            throw new InvalidDataException($"{file}: '{name}' has shape [{string.Join(", ", array.Shape)}], expected [{string.Join(", ", shape)}]");
        (transpose ? Matrix.Transpose(array.Values, (int)shape[0], (int)shape[1]) : array.Values).CopyTo(target, 0);
    }
}
