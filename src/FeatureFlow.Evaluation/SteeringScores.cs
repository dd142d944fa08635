using System.Text.RegularExpressions;
using FeatureFlow.Sae;
using MathNet.Numerics.Distributions;

namespace FeatureFlow.Evaluation;

/// <summary>Whether steering should raise the topic (promotion) or remove it (suppression).</summary>
public enum SteeringGoal { Promote, Suppress }

/// <summary>Which share of the text counts as the topic being present.</summary>
public enum BehaviourMeasure
{
    /// <summary>The theme-word rate: share of words that are theme words.</summary>
    ThemeWords,
    /// <summary>The seed feature's active share: share of generated tokens on which it fires (z &gt; 0).</summary>
    FeatureActivity,
}

/// <summary>One prompt's unsteered reference: mean behaviour share and geometric-mean perplexity over seeds.</summary>
public sealed record Baseline(double Behaviour, double Perplexity);

/// <summary>
/// The judge-free scores of one generation, as pure functions (the engine-side read-out is
/// <see cref="GenerationScorer"/>). Definitions, exactly:
/// <list type="bullet">
/// <item>perplexity = exp(−(1/n)·Σ_k log p(t_k | prompt, t_&lt;k)) under the unsteered model;</item>
/// <item>activation = (1/n)·Σ_k z_f(h_k), the seed feature's SAE activation at each generated token's
/// own position;</item>
/// <item>active share = (1/n)·#{k : z_f(h_k) &gt; 0};</item>
/// <item>theme rate = #theme words / #words, words being maximal runs of [A-Za-z'] compared case-insensitively;</item>
/// <item>behaviour B: promotion B = x (a share, already in [0, 1]); suppression B = clamp(1 − x/x₀, 0, 1),
/// where x is the chosen share and x₀ the prompt's unsteered mean (x₀ = 0: B = 1 if x = 0, else 0: nothing
/// was there to remove);</item>
/// <item>coherence C = min(1, ppl₀/ppl) = exp(−max(0, ln ppl − ln ppl₀)), ppl₀ the prompt's unsteered
/// geometric-mean perplexity (no tokens: C = 0);</item>
/// <item>combined = B·C, the paper's behaviour × coherence with the judge replaced by these proxies.</item>
/// </list>
/// </summary>
public static partial class SteeringScores
{
    /// <summary>exp(−mean log p); NaN for no tokens.</summary>
    public static double Perplexity(IReadOnlyList<double> logProbs) =>
        logProbs.Count == 0 ? double.NaN : Math.Exp(-logProbs.Average());

    /// <summary>
    /// Mean activation and active share of <paramref name="feature"/> over <paramref name="count"/> positions from
    /// <paramref name="first"/> of <paramref name="siteValues"/> ([positions, d_in], row-major). NaN for no positions.
    /// </summary>
    public static (double Activation, double ActiveShare) FeatureActivation(
        ReadOnlySpan<float> siteValues, int first, int count, SparseAutoencoder sae, int feature)
    {
        sae.CheckFeature(feature, "feature");
        if (count == 0) return (double.NaN, double.NaN);
        int d = sae.DIn;
        if ((first + count) * d > siteValues.Length)
            throw new ArgumentException($"{first + count} positions of width {d} do not fit {siteValues.Length} values");
        var z = new float[sae.DSae];
        var scratch = new float[d];
        double sum = 0;
        var active = 0;
        for (var p = first; p < first + count; p++)
        {
            // Encode applies the whole SAE (TopK keeps the k largest), so a feature's value depends on the others.
            sae.Encode(siteValues.Slice(p * d, d), z, scratch);
            sum += z[feature];
            if (z[feature] > 0) active++;
        }
        return (sum / count, active / (double)count);
    }

    /// <summary>Share of the text's words that are theme words (0 for a text without words).</summary>
    public static double ThemeWordRate(string text, IReadOnlyCollection<string> themeWords)
    {
        var words = WordPattern().Matches(text);
        if (words.Count == 0) return 0;
        var themes = new HashSet<string>(themeWords, StringComparer.OrdinalIgnoreCase);
        return words.Count(w => themes.Contains(w.Value)) / (double)words.Count;
    }

    /// <summary>Behaviour B in [0, 1] of share <paramref name="share"/> against the prompt's unsteered mean.</summary>
    public static double Behaviour(SteeringGoal goal, double share, double baselineShare)
    {
        if (double.IsNaN(share)) return 0;
        if (goal == SteeringGoal.Promote) return Math.Clamp(share, 0, 1);
        if (baselineShare <= 0) return share <= 0 ? 1 : 0;
        return Math.Clamp(1 - share / baselineShare, 0, 1);
    }

    /// <summary>C = min(1, ppl₀/ppl): 1 at or below the unsteered perplexity, halving as perplexity doubles.</summary>
    public static double Coherence(double perplexity, double baselinePerplexity)
    {
        if (double.IsNaN(perplexity) || double.IsNaN(baselinePerplexity)) return 0;
        return Math.Min(1, baselinePerplexity / perplexity);
    }

    public static double Combined(double behaviour, double coherence) => behaviour * coherence;

    /// <summary>
    /// The paper's judged score from 0–5 ratings: (topic/5)·(coherence/5) for promotion,
    /// (1 − topic/5)·(coherence/5) for suppression.
    /// </summary>
    public static double JudgeScore(SteeringGoal goal, double topic, double coherence) =>
        (goal == SteeringGoal.Promote ? topic / 5 : 1 - topic / 5) * (coherence / 5);

    /// <summary>
    /// A prompt's unsteered reference from its unsteered generations: mean share, and perplexity as
    /// exp(mean ln ppl) so that one degenerate sample does not dominate. Generations without tokens are left out.
    /// </summary>
    public static Baseline BaselineOf(IEnumerable<(double Share, double Perplexity)> unsteered)
    {
        var rows = unsteered.Where(r => !double.IsNaN(r.Perplexity)).ToArray();
        if (rows.Length == 0) return new Baseline(double.NaN, double.NaN);
        return new Baseline(rows.Average(r => r.Share), Math.Exp(rows.Average(r => Math.Log(r.Perplexity))));
    }

    [GeneratedRegex("[A-Za-z']+")]
    private static partial Regex WordPattern();
}

/// <summary>
/// Mean and 95% Student-t interval half-width t₀.₉₇₅,ₙ₋₁·sd/√n of the finite values; NaN half-width for n &lt; 2.
/// </summary>
public sealed record ConfidenceInterval(double Mean, double HalfWidth, int N)
{
    public static ConfidenceInterval Of(IEnumerable<double> values)
    {
        var finite = values.Where(double.IsFinite).ToArray();
        var n = finite.Length;
        if (n == 0) return new ConfidenceInterval(double.NaN, double.NaN, 0);
        var mean = finite.Average();
        if (n == 1) return new ConfidenceInterval(mean, double.NaN, 1);
        var sd = Math.Sqrt(finite.Sum(v => (v - mean) * (v - mean)) / (n - 1));
        return new ConfidenceInterval(mean, StudentT.InvCDF(0, 1, n - 1, 0.975) * sd / Math.Sqrt(n), n);
    }

    public double Low => Mean - HalfWidth;
    public double High => Mean + HalfWidth;

    public override string ToString() => FormattableString.Invariant($"{Mean:G4} ± {HalfWidth:G3}");
}
