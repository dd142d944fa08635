using System.Numerics.Tensors;
using FeatureFlow.Models;

namespace FeatureFlow.Sae;

public enum SaeActivation
{
    /// <summary>z = ReLU(pre).</summary>
    Relu,
    /// <summary>z = the k largest of ReLU(pre), others 0.</summary>
    TopK,
    /// <summary>z = pre·[pre &gt; θ] (per-feature θ).</summary>
    JumpRelu,
}

/// <summary>
/// One SAE at one site: pre = W_enc·(x − b_dec·[apply_b_dec_to_input]) + b_enc, z = σ(pre),
/// x̂ = W_decᵀ·z + b_dec. Weights are held feature-major: row j of <see cref="Encoder"/> and
/// <see cref="Decoder"/> belong to feature j (SAELens stores W_enc transposed, [d_in, d_sae]).
/// </summary>
public sealed class SparseAutoencoder
{
    public SparseAutoencoder(int dIn, int dSae, SaeActivation activation, Site site)
    {
        DIn = dIn;
        DSae = dSae;
        Activation = activation;
        Site = site;
        Encoder = new float[dSae * dIn];
        EncoderBias = new float[dSae];
        Decoder = new float[dSae * dIn];
        DecoderBias = new float[dIn];
        Threshold = new float[dSae];
    }

    public int DIn { get; }
    public int DSae { get; }
    public SaeActivation Activation { get; }
    public Site Site { get; }
    public int K { get; init; }
    public bool ApplyDecoderBiasToInput { get; init; } = true;
    public string ModelName { get; init; } = "";
    public float[] Encoder { get; }       // [d_sae, d_in]
    public float[] EncoderBias { get; }   // [d_sae]
    public float[] Decoder { get; }       // [d_sae, d_in]
    public float[] DecoderBias { get; }   // [d_in]
    /// <summary>JumpReLU θ; for TopK SAEs, the per-feature threshold that approximates top-k selection in the steering hook.</summary>
    public float[] Threshold { get; }
    /// <summary>Training or provenance facts (FVU, L0, dead share, source), written to cfg.json's metadata.</summary>
    public Dictionary<string, string> Metadata { get; } = new(StringComparer.Ordinal);

    public ReadOnlySpan<float> EncoderRow(int feature) => Encoder.AsSpan(feature * DIn, DIn);
    public ReadOnlySpan<float> DecoderRow(int feature) => Decoder.AsSpan(feature * DIn, DIn);

    public void CheckFeature(int feature, string field)
    {
        if ((uint)feature >= (uint)DSae) throw new ArgumentOutOfRangeException(field, $"feature {feature} does not exist at {Site} (the SAE has features 0..{DSae - 1})");
    }

    /// <summary>Pre-activations of every feature for one input.</summary>
    public void PreActivations(ReadOnlySpan<float> x, Span<float> pre, Span<float> scratch)
    {
        var input = x;
        if (ApplyDecoderBiasToInput)
        {
            TensorPrimitives.Subtract(x, DecoderBias, scratch);
            input = scratch;
        }
        for (var j = 0; j < DSae; j++) pre[j] = TensorPrimitives.Dot(EncoderRow(j), input) + EncoderBias[j];
    }

    /// <summary>Feature activations z for one input (<paramref name="z"/> has d_sae entries).</summary>
    public void Encode(ReadOnlySpan<float> x, Span<float> z, Span<float> scratch)
    {
        PreActivations(x, z, scratch);
        ApplyActivation(z);
    }

    public void ApplyActivation(Span<float> pre)
    {
        switch (Activation)
        {
            case SaeActivation.Relu:
                TensorPrimitives.Max(pre, 0f, pre);
                break;
            case SaeActivation.JumpRelu:
                for (var j = 0; j < pre.Length; j++) if (!(pre[j] > Threshold[j])) pre[j] = 0f;
                break;
            case SaeActivation.TopK:
                KeepTopK(pre, K);
                break;
        }
    }

    /// <summary>Keeps the k largest positive values (ties: lower index first) and zeroes the rest.</summary>
    public static void KeepTopK(Span<float> values, int k)
    {
        Span<int> top = k <= 256 ? stackalloc int[k] : new int[k];
        var count = TopIndices(values, k, top);
        Span<float> kept = k <= 256 ? stackalloc float[k] : new float[k];
        for (var i = 0; i < count; i++) kept[i] = values[top[i]];
        values.Clear();
        for (var i = 0; i < count; i++) if (kept[i] > 0f) values[top[i]] = kept[i];
    }

    /// <summary>Indices of the k largest values, largest first; ties go to the lower index. Returns how many were found.</summary>
    public static int TopIndices(ReadOnlySpan<float> values, int k, Span<int> top)
    {
        var count = 0;
        for (var j = 0; j < values.Length; j++)
        {
            var v = values[j];
            if (count == k && !(v > values[top[count - 1]])) continue;
            var at = count < k ? count++ : k - 1;
            while (at > 0 && v > values[top[at - 1]])
            {
                top[at] = top[at - 1];
                at--;
            }
            top[at] = j;
        }
        return count;
    }

    /// <summary>x̂ = W_decᵀ·z + b_dec.</summary>
    public void Decode(ReadOnlySpan<float> z, Span<float> xHat)
    {
        DecoderBias.CopyTo(xHat);
        for (var j = 0; j < DSae; j++)
            if (z[j] != 0f) TensorPrimitives.MultiplyAdd(DecoderRow(j), z[j], xHat, xHat);
    }

    /// <summary>
    /// The feature as the steering hook sees it: a(h) = JumpReLU_θ(e·h + b) with the decoder bias folded
    /// into b (b = b_enc − e·b_dec when the SAE subtracts b_dec from its input).
    /// </summary>
    public (float[] Decoder, float[] Encoder, float Bias, float Threshold) HookFeature(int feature)
    {
        var e = EncoderRow(feature);
        var bias = EncoderBias[feature] - (ApplyDecoderBiasToInput ? TensorPrimitives.Dot(e, DecoderBias) : 0f);
        return (DecoderRow(feature).ToArray(), e.ToArray(), bias, HookThreshold(feature));
    }

    /// <summary>The θ the steering hook applies for a feature: the stored one, never below 0 (0 for ReLU).</summary>
    public float HookThreshold(int feature) =>
        Activation == SaeActivation.Relu ? 0f : Math.Max(0f, Threshold[feature]);
}
