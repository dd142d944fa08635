using FeatureFlow.Models;
using FeatureFlow.Sae.Training;

namespace FeatureFlow.Sae.Tests;

public class ThresholdCalibrationTests
{
    private static readonly Site At = new(0, SiteKind.ResidPost);

    /// <summary>
    /// An identity SAE (pre = x) with k = 1 over three features: pre₀, pre₁ ~ U(0, 1) and pre₂ = 0.5. Top-1
    /// selects feature 0 when pre₀ &gt; max(pre₁, 0.5), which happens with probability ∫₀.₅¹ x dx = 0.375.
    /// </summary>
    private static (SparseAutoencoder Sae, float[] Pre) Synthetic(int tokens, int seed)
    {
        var sae = new SparseAutoencoder(3, 3, SaeActivation.TopK, At) { K = 1, ApplyDecoderBiasToInput = false };
        for (var j = 0; j < 3; j++) sae.Encoder[j * 3 + j] = sae.Decoder[j * 3 + j] = 1f;
        var rng = new Random(seed);
        var pre = new float[tokens * 3];
        for (var t = 0; t < tokens; t++)
            (pre[t * 3], pre[t * 3 + 1], pre[t * 3 + 2]) = (rng.NextSingle(), rng.NextSingle(), 0.5f);
        return (sae, pre);
    }

    private static double FiringRate(float[] pre, int feature, float threshold) =>
        Enumerable.Range(0, pre.Length / 3).Count(t => pre[t * 3 + feature] > threshold) / (double)(pre.Length / 3);

    [Fact]
    public void Rate_matched_thresholds_reproduce_the_top_k_firing_rate_on_fresh_samples()
    {
        const int n = 20_000;
        var (sae, calibration) = Synthetic(n, 1);
        ThresholdCalibration.Calibrate(sae, calibration, ThresholdRule.RateMatched);
        var fresh = Synthetic(n, 2).Pre;
        // Sampling error of a rate near 0.375 over 20,000 tokens is 0.0034, on both the calibration and the fresh side.
        foreach (var j in new[] { 0, 1 })
        {
            Assert.InRange(sae.Threshold[j], 0.625f - 0.015f, 0.625f + 0.015f);   // P(U > 0.625) = 0.375
            Assert.InRange(FiringRate(fresh, j, sae.Threshold[j]), 0.375 - 0.02, 0.375 + 0.02);
        }
    }

    [Fact]
    public void Max_jaccard_thresholds_find_the_best_single_cut()
    {
        // Firing when pre₀ > t: for t ≥ 0.5 the Jaccard index with top-1 is
        // ((1 − t²)/2) / (1 − t + 0.375 − (1 − t²)/2), which falls from 0.75 at t = 0.5; below 0.5 a lower cut
        // only adds false positives. The rate-matched 0.625 gives 0.684.
        var (sae, calibration) = Synthetic(20_000, 3);
        ThresholdCalibration.Calibrate(sae, calibration, ThresholdRule.MaxJaccard);
        Assert.InRange(sae.Threshold[0], 0.48f, 0.52f);
        Assert.InRange(sae.Threshold[1], 0.48f, 0.52f);
    }

    [Fact]
    public void The_selected_percentile_rule_is_the_first_rule_bit_for_bit()
    {
        var (sae, pre) = Synthetic(5_000, 4);
        ThresholdCalibration.Calibrate(sae, pre, ThresholdRule.SelectedPercentile, 0.10);
        for (var j = 0; j < 2; j++)
        {
            var feature = j;
            var selected = Enumerable.Range(0, 5_000)
                .Where(t => pre[t * 3 + feature] > Math.Max(pre[t * 3 + 1 - feature], 0.5f))
                .Select(t => pre[t * 3 + feature]).Order().ToList();
            Assert.Equal(selected[(int)(0.10 * (selected.Count - 1))], sae.Threshold[j]);
        }
    }

    [Theory]
    [InlineData(ThresholdRule.RateMatched)]
    [InlineData(ThresholdRule.MaxJaccard)]
    public void A_feature_top_k_never_selects_stays_silent_on_the_calibration_data(ThresholdRule rule)
    {
        // k = 1 and feature 0 always loses to feature 1.
        var sae = new SparseAutoencoder(2, 2, SaeActivation.TopK, At) { K = 1, ApplyDecoderBiasToInput = false };
        sae.Encoder[0] = sae.Encoder[3] = 1f;
        float[] pre = [0.3f, 1f, 0.7f, 2f, 0.1f, 0.5f];
        ThresholdCalibration.Calibrate(sae, pre, rule);
        Assert.Equal(0.7f, sae.Threshold[0]);
        Assert.Equal(0f, sae.Threshold[1]);
    }

    [Fact]
    public void Only_topk_saes_are_calibrated()
    {
        var jump = new SparseAutoencoder(2, 2, SaeActivation.JumpRelu, At);
        Assert.Throws<ArgumentException>(
            () => ThresholdCalibration.Calibrate(jump, [1f, 1f], ThresholdRule.RateMatched));
    }
}
