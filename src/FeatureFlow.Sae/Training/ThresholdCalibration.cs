namespace FeatureFlow.Sae.Training;

/// <summary>
/// How a TopK SAE's per-feature thresholds are chosen. The steering hook cannot rank features, so for
/// rescale and clamp it reads a(h) = JumpReLU_θ(pre); θ decides how closely that stand-in follows top-k.
/// </summary>
public enum ThresholdRule
{
    /// <summary>θ_j = a low percentile of feature j's activations when top-k selects it (the first rule).</summary>
    SelectedPercentile,
    /// <summary>θ_j = the (1 − p_j) quantile of pre_j, p_j being how often top-k selects j: same firing rate.</summary>
    RateMatched,
    /// <summary>θ_j maximising the Jaccard index of {tokens: pre_j &gt; θ_j} and {tokens: top-k selects j}.</summary>
    MaxJaccard,
}

/// <summary>Sets a TopK SAE's hook thresholds from activations (every rule reads positive pre-activations).</summary>
public static class ThresholdCalibration
{
    /// <summary>Rewrites <see cref="SparseAutoencoder.Threshold"/> from activations ([tokens, d_in]).</summary>
    public static void Calibrate(SparseAutoencoder sae, ReadOnlySpan<float> activations, ThresholdRule rule,
        double percentile = 0.10)
    {
        if (sae.Activation != SaeActivation.TopK)
            throw new ArgumentException(
                $"{sae.Site}: only TopK SAEs have hook thresholds to calibrate ({sae.Activation} SAEs fire as stored)");
        var samples = Sample(sae, activations);
        for (var j = 0; j < sae.DSae; j++)
            sae.Threshold[j] = rule switch
            {
                ThresholdRule.SelectedPercentile => SelectedPercentile(samples[j], percentile),
                ThresholdRule.RateMatched => RateMatched(samples[j]),
                ThresholdRule.MaxJaccard => MaxJaccard(samples[j]),
                _ => throw new ArgumentOutOfRangeException(nameof(rule), rule, null),
            };
    }

    /// <summary>
    /// Per feature, its positive pre-activations and whether top-k selected it there, largest first.
    /// Non-positive values are left out: top-k never keeps them and the hook's θ is at least 0.
    /// </summary>
    private static List<(float Value, bool Selected)>[] Sample(SparseAutoencoder sae, ReadOnlySpan<float> activations)
    {
        var d = sae.DIn;
        var samples = Enumerable.Range(0, sae.DSae).Select(_ => new List<(float Value, bool Selected)>()).ToArray();
        var pre = new float[sae.DSae];
        var top = new float[sae.DSae];
        var scratch = new float[d];
        for (var i = 0; i < activations.Length / d; i++)
        {
            sae.PreActivations(activations.Slice(i * d, d), pre, scratch);
            pre.CopyTo(top, 0);
            SparseAutoencoder.KeepTopK(top, sae.K);
            for (var j = 0; j < pre.Length; j++)
                if (pre[j] > 0f) samples[j].Add((pre[j], top[j] > 0f));
        }
        // A total order (value, then selected first) so the result never depends on the sort's stability.
        foreach (var s in samples)
            s.Sort((a, b) => a.Value != b.Value ? b.Value.CompareTo(a.Value) : b.Selected.CompareTo(a.Selected));
        return samples;
    }

    /// <summary>The first rule, bit for bit: θ = selected values (ascending) at ⌊p·(n − 1)⌋, 0 if none.</summary>
    private static float SelectedPercentile(List<(float Value, bool Selected)> sorted, double percentile)
    {
        var selected = sorted.Where(s => s.Selected).Select(s => s.Value).Reverse().ToList();
        return selected.Count == 0 ? 0f : selected[(int)(percentile * (selected.Count - 1))];
    }

    private static float RateMatched(List<(float Value, bool Selected)> sorted)
    {
        var selected = sorted.Count(s => s.Selected);
        return CutAt(sorted, selected);
    }

    private static float MaxJaccard(List<(float Value, bool Selected)> sorted)
    {
        var selected = sorted.Count(s => s.Selected);
        int best = 0, truePositives = 0;
        var bestJaccard = 0.0;
        for (var c = 1; c <= sorted.Count; c++)
        {
            if (sorted[c - 1].Selected) truePositives++;
            // A threshold can only fall between two different values.
            if (c < sorted.Count && !(sorted[c - 1].Value > sorted[c].Value)) continue;
            var jaccard = truePositives / (double)(c + selected - truePositives);
            if (jaccard > bestJaccard) (best, bestJaccard) = (c, jaccard);
        }
        return CutAt(sorted, best);
    }

    /// <summary>
    /// θ under which exactly the <paramref name="count"/> largest values fire (pre &gt; θ): the midpoint to the next
    /// value, 0 when all fire, and the largest value when none may (a feature top-k never picks stays silent).
    /// </summary>
    private static float CutAt(List<(float Value, bool Selected)> sorted, int count)
    {
        if (sorted.Count == 0 || count >= sorted.Count) return 0f;
        if (count == 0) return sorted[0].Value;
        return sorted[count - 1].Value / 2 + sorted[count].Value / 2;
    }
}
