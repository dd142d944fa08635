using System.Globalization;
using System.Text;
using FeatureFlow.Models;
using FeatureFlow.Sae;

namespace FeatureFlow.Evaluation;

/// <summary>
/// How closely the steering hook's stand-in a(h) = JumpReLU_θ(pre) follows a TopK SAE at one site.
/// Counts and Jaccard are means over tokens (two empty sets agree: Jaccard 1); the masses are ratios of
/// sums over tokens, so near-silent tokens do not dominate.
/// </summary>
/// <param name="Saes">label of the SAE set (its folder)</param>
/// <param name="TopKL0">mean features top-k keeps per token</param>
/// <param name="HookL0">mean features the hook's JumpReLU fires per token</param>
/// <param name="Jaccard">mean |T ∩ J| / |T ∪ J| of the two active sets</param>
/// <param name="MissedMass">share of top-k's activation mass on features the hook does not fire</param>
/// <param name="ExtraMass">share of the hook's activation mass on features top-k drops</param>
/// <param name="TopKFvu">FVU decoding top-k's activations (the SAE as trained)</param>
/// <param name="HookFvu">FVU decoding the hook's activations instead</param>
public sealed record FidelityRow(
    string Saes, Site Site, int DSae, int K, long Tokens, double TopKL0, double HookL0, double Jaccard,
    double MissedMass, double ExtraMass, double TopKFvu, double HookFvu);

public static class Fidelity
{
    public static FidelityRow Measure(string label, SparseAutoencoder sae, ReadOnlySpan<float> activations)
    {
        if (sae.Activation != SaeActivation.TopK)
            throw new ArgumentException($"{label} {sae.Site}: a {sae.Activation} SAE has no top-k to imitate");
        int d = sae.DIn, n = activations.Length / d;
        if (n == 0) throw new ArgumentException($"{label} {sae.Site}: no activations to measure");
        var mean = new double[d];
        for (var i = 0; i < n; i++)
            for (var c = 0; c < d; c++) mean[c] += activations[i * d + c];
        for (var c = 0; c < d; c++) mean[c] /= n;

        var theta = Enumerable.Range(0, sae.DSae).Select(sae.HookThreshold).ToArray();
        float[] pre = new float[sae.DSae], top = new float[sae.DSae], hook = new float[sae.DSae];
        float[] scratch = new float[d], topHat = new float[d], hookHat = new float[d];
        double topCount = 0, hookCount = 0, jaccard = 0, topMass = 0, hookMass = 0, missed = 0, extra = 0;
        double total = 0, topResidual = 0, hookResidual = 0;
        for (var i = 0; i < n; i++)
        {
            var x = activations.Slice(i * d, d);
            sae.PreActivations(x, pre, scratch);
            pre.CopyTo(top, 0);
            SparseAutoencoder.KeepTopK(top, sae.K);
            int both = 0, union = 0;
            for (var j = 0; j < pre.Length; j++)
            {
                // The hook graph's Where(Greater(pre, θ), pre, 0).
                hook[j] = pre[j] > theta[j] ? pre[j] : 0f;
                bool inTop = top[j] > 0f, inHook = hook[j] > 0f;
                if (inTop) (topCount, topMass) = (topCount + 1, topMass + top[j]);
                if (inHook) (hookCount, hookMass) = (hookCount + 1, hookMass + hook[j]);
                if (inTop && !inHook) missed += top[j];
                if (inHook && !inTop) extra += hook[j];
                if (inTop && inHook) both++;
                if (inTop || inHook) union++;
            }
            jaccard += union == 0 ? 1.0 : both / (double)union;
            sae.Decode(top, topHat);
            sae.Decode(hook, hookHat);
            for (var c = 0; c < d; c++)
            {
                double v = x[c] - mean[c], et = x[c] - topHat[c], eh = x[c] - hookHat[c];
                total += v * v;
                topResidual += et * et;
                hookResidual += eh * eh;
            }
        }
        return new FidelityRow(label, sae.Site, sae.DSae, sae.K, n, topCount / n, hookCount / n, jaccard / n,
            Share(missed, topMass), Share(extra, hookMass), topResidual / total, hookResidual / total);
    }

    private static double Share(double part, double whole) => whole > 0 ? part / whole : 0;

    public static string ToCsv(IEnumerable<FidelityRow> rows)
    {
        var sb = new StringBuilder(
            "saes,site,d_sae,k,tokens,topk_l0,hook_l0,jaccard,missed_mass,extra_mass,topk_fvu,hook_fvu\n");
        foreach (var r in rows)
            sb.AppendLine(CultureInfo.InvariantCulture,
                $"{r.Saes},{r.Site.HookName},{r.DSae},{r.K},{r.Tokens},{r.TopKL0:R},{r.HookL0:R},{r.Jaccard:R},"
                + $"{r.MissedMass:R},{r.ExtraMass:R},{r.TopKFvu:R},{r.HookFvu:R}");
        return sb.ToString();
    }

    /// <summary>One table row per set and site, then per set the mean over its sites.</summary>
    public static string ToMarkdown(IReadOnlyList<FidelityRow> rows)
    {
        var sb = new StringBuilder();
        sb.AppendLine("| SAEs | site | d_sae | k | top-k L0 | hook L0 | Jaccard | missed mass | extra mass | FVU top-k "
            + "| FVU hook |");
        sb.AppendLine("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var r in rows)
            sb.AppendLine(Line(r.Saes, $"`{r.Site.HookName}`", r.DSae.ToString(CultureInfo.InvariantCulture),
                r.K.ToString(CultureInfo.InvariantCulture), [r]));
        foreach (var set in rows.GroupBy(r => r.Saes))
            sb.AppendLine(Line(set.Key, "**mean of sites**", "", "", set.ToArray()));
        return sb.ToString();
    }

    private static string Line(string saes, string site, string dSae, string k, FidelityRow[] rows) =>
        string.Create(CultureInfo.InvariantCulture,
            $"| {saes} | {site} | {dSae} | {k} | {rows.Average(r => r.TopKL0):F2} | {rows.Average(r => r.HookL0):F2} | "
            + $"{rows.Average(r => r.Jaccard):F3} | {rows.Average(r => r.MissedMass):P1} | "
            + $"{rows.Average(r => r.ExtraMass):P1} | "
            + $"{rows.Average(r => r.TopKFvu):F4} | {rows.Average(r => r.HookFvu):F4} |");
}
