namespace FeatureFlow.Models.Export;

/// <summary>
/// The rotary inverse frequencies of one head, the one place every exporter and fused-operator variant reads them
/// from (so rope scaling applies to all graphs alike). Scaled kinds follow transformers' _compute_*_parameters
/// (modeling_rope_utils.py) term for term, in double precision from the unscaled float32 frequencies.
/// </summary>
public static class RotaryFrequencies
{
    public static float[] Inverse(ModelArchitecture arch)
    {
        var unscaled = Unscaled(arch);
        if (arch.RopeScaling is not { } scaling) return unscaled;
        return scaling.Kind switch
        {
            RopeScalingKind.Linear => unscaled.Select(f => (float)(f / scaling.Factor)).ToArray(),
            // Exact: dynamic NTK changes the base only past max_position_embeddings, our context length.
            RopeScalingKind.Dynamic => unscaled,
            RopeScalingKind.Llama3 => unscaled.Select(f => (float)Llama3(f, scaling)).ToArray(),
            RopeScalingKind.Yarn => Yarn(arch, scaling),
            _ => throw new InvalidDataException($"rope scaling {scaling.Kind} has no frequency formula"),
        };
    }

    /// <summary>
    /// What rope scaling multiplies cos and sin by (YaRN's attention factor; 1 otherwise). Rotation is linear, so a
    /// graph may instead scale the query and key projections by it.
    /// </summary>
    public static float AttentionFactor(ModelArchitecture arch) =>
        arch.RopeScaling is { Kind: RopeScalingKind.Yarn, AttentionFactor: { } factor } ? (float)factor : 1f;

    /// <summary>1 / theta^(2i / head_size) for i &lt; head_size/2, in float32 exactly as run.c computes them.</summary>
    private static float[] Unscaled(ModelArchitecture arch)
    {
        var half = arch.HeadSize / 2;
        var freqs = new float[half];
        for (var i = 0; i < half; i++) freqs[i] = 1.0f / MathF.Pow(arch.RotaryTheta, 2 * i / (float)arch.HeadSize);
        return freqs;
    }

    private static double Llama3(double inverse, RopeScaling s)
    {
        double original = s.OriginalContextLength!.Value, low = s.LowFreqFactor!.Value, high = s.HighFreqFactor!.Value;
        var wavelength = 2 * Math.PI / inverse;
        if (wavelength < original / high) return inverse;
        if (wavelength > original / low) return inverse / s.Factor;
        var smooth = (original / wavelength - low) / (high - low);
        return (1 - smooth) * inverse / s.Factor + smooth * inverse;
    }

    private static float[] Yarn(ModelArchitecture arch, RopeScaling s)
    {
        double dim = arch.HeadSize, theta = arch.RotaryTheta;
        double CorrectionDim(double rotations) =>
            dim * Math.Log(s.OriginalContextLength!.Value / (rotations * 2 * Math.PI)) / (2 * Math.Log(theta));
        double low = CorrectionDim(s.BetaFast!.Value), high = CorrectionDim(s.BetaSlow!.Value);
        if (s.Truncate!.Value) (low, high) = (Math.Floor(low), Math.Ceiling(high));
        (low, high) = (Math.Max(low, 0), Math.Min(high, dim - 1));
        if (low == high) high += 0.001; // transformers' guard against a zero-width ramp
        var freqs = new float[arch.HeadSize / 2];
        for (var i = 0; i < freqs.Length; i++)
        {
            var extrapolation = 1 / Math.Pow(theta, 2 * i / dim);
            var interpolation = extrapolation / s.Factor;
            var extrapolationWeight = 1 - Math.Clamp((i - low) / (high - low), 0, 1);
            freqs[i] = (float)(interpolation * (1 - extrapolationWeight) + extrapolation * extrapolationWeight);
        }
        return freqs;
    }
}
