namespace FeatureFlow.Models.Export;

/// <summary>
/// The rotary inverse frequencies of one head, the one place every exporter and fused-operator variant reads them
/// from (so rope scaling applies to all graphs alike).
/// </summary>
public static class RotaryFrequencies
{
    /// <summary>1 / theta^(2i / head_size) for i &lt; head_size/2, in float32 exactly as run.c computes them.</summary>
    public static float[] Inverse(ModelArchitecture arch)
    {
        var half = arch.HeadSize / 2;
        var freqs = new float[half];
        for (var i = 0; i < half; i++) freqs[i] = 1.0f / MathF.Pow(arch.RotaryTheta, 2 * i / (float)arch.HeadSize);
        return freqs;
    }
}
