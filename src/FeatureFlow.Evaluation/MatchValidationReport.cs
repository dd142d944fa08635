using System.Globalization;
using System.Text;
using FeatureFlow.Models;

namespace FeatureFlow.Evaluation;

/// <summary>
/// One choice of predecessor over n samples: the share whose target ends at or below ε, and the mean of
/// 1 − after/before, unclipped (at most 1; negative where deactivating raised the target) and clipped to [0, 1].
/// NaN when n is 0.
/// </summary>
public sealed record MatchRate(int N, double Success, double MeanChange, double MeanChangeClipped)
{
    public static MatchRate Of(IReadOnlyList<(float Before, float After)> pairs, float epsilon)
    {
        if (pairs.Count == 0) return new MatchRate(0, double.NaN, double.NaN, double.NaN);
        var changes = pairs.Select(p => 1 - (double)p.After / p.Before).ToArray();
        return new MatchRate(pairs.Count, pairs.Count(p => p.After <= epsilon) / (double)pairs.Count, changes.Average(),
            changes.Average(c => Math.Clamp(c, 0, 1)));
    }
}

/// <summary>
/// One line of the table: a predecessor site and a layer (null: all layers pooled). <see cref="Sampled"/> counts the
/// (token, target) samples; <see cref="MatchInactive"/> those whose top-1 match was off on the token; the three
/// rates are over the rest, the same samples for all three.
/// </summary>
public sealed record MatchSummaryRow(
    MatchSite Site, int? Layer, int Sampled, int MatchInactive, MatchRate Top1, MatchRate Random, MatchRate Exhaustive);

/// <summary>A match validation run: its samples, the summary table, hook agreement and timing.</summary>
public sealed record MatchValidationReport(
    MatchValidationOptions Options, IReadOnlyList<MatchSample> Samples, IReadOnlyList<MatchSummaryRow> Summary,
    IReadOnlyList<HookAgreement> Agreement, long Rows, TimeSpan StoriesTime, TimeSpan EvaluationTime, string Provider)
{
    public const string TableFile = "matches.csv", SamplesFile = "samples.csv", MarkdownFile = "matches.md";

    public TimeSpan WallTime => StoriesTime + EvaluationTime;

    public static MatchValidationReport Create(MatchValidationOptions options, int layers,
        IReadOnlyList<TokenEvaluation> tokens, TimeSpan storiesTime, TimeSpan evaluationTime, string provider)
    {
        var samples = tokens.SelectMany(t => t.Samples).ToArray();
        var agreement = tokens.SelectMany(t => t.Agreement).GroupBy(a => a.Site.Kind).OrderBy(g => g.Key)
            .Select(g => new HookAgreement(g.Key, g.Average(a => a.Hook), g.Average(a => a.TopK),
                g.Sum(a => (double)a.Both) / Math.Max(1, g.Sum(a => a.TopK))))
            .ToArray();
        return new MatchValidationReport(options, samples, Summarize(samples, layers, options.Epsilon), agreement,
            tokens.Sum(t => (long)t.Rows), storiesTime, evaluationTime, provider);
    }

    /// <summary>Per predecessor site (R, M, A, all three) one line per layer, then all layers pooled.</summary>
    public static IReadOnlyList<MatchSummaryRow> Summarize(IReadOnlyList<MatchSample> samples, int layers,
        float epsilon)
    {
        var rows = new List<MatchSummaryRow>();
        foreach (var site in Enum.GetValues<MatchSite>())
        {
            var first = site == MatchSite.Resid ? 1 : 0;
            foreach (var layer in Enumerable.Range(first, layers - first).Select(l => (int?)l).Append(null))
            {
                var group = samples.Where(s => s.Site == site && (layer is null || s.Layer == layer)).ToArray();
                var on = group.Where(s => s.MatchActive).ToArray();
                MatchRate Rate(Func<MatchSample, Intervention?> choice) =>
                    MatchRate.Of(on.Select(s => (s.Before, choice(s)!.After)).ToArray(), epsilon);
                rows.Add(new MatchSummaryRow(site, layer, group.Length, group.Length - on.Length,
                    Rate(s => s.Top1), Rate(s => s.Random), Rate(s => s.Exhaustive)));
            }
        }
        return rows;
    }

    public static string SiteLabel(MatchSite site) => site switch
    {
        MatchSite.Resid => "R(L-1)",
        MatchSite.Mlp => "M(L)",
        MatchSite.Attn => "A(L)",
        _ => "all three",
    };

    public string ToMarkdownTable()
    {
        var text = new StringBuilder();
        text.AppendLine("| site | layer | sampled | match off | n | top-1 success | top-1 Δ | random success "
                        + "| random Δ | exhaustive success | exhaustive Δ |");
        text.AppendLine("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var r in Summary)
        {
            var layer = r.Layer is { } l ? l.ToString(CultureInfo.InvariantCulture) : "**all**";
            text.Append(Invariant($"| {SiteLabel(r.Site)} | {layer} | {r.Sampled} | {r.MatchInactive} | {r.Top1.N} |"));
            foreach (var rate in new[] { r.Top1, r.Random, r.Exhaustive })
                text.Append(Invariant($" {Percent(rate.Success)} | {Change(rate.MeanChange)} |"));
            text.AppendLine();
        }
        return text.ToString();
    }

    public string ToMarkdown()
    {
        var o = Options;
        var text = new StringBuilder();
        text.AppendLine("# Match validation: deactivating a feature's predecessors");
        text.AppendLine();
        text.AppendLine(Invariant(
            $"{o.Sequences} of the model's own stories × {o.Tokens} tokens (from BOS, seed {o.Seed} + i, ",
            $"temperature {o.Temperature}, top-p {o.TopP}); {o.SamplesPerLayer} sampled tokens after BOS, each with ",
            $"one random active target per layer at R(L); deactivation {DeactivationText(o.Deactivation)}; ",
            $"ε = {o.Epsilon}."));
        text.AppendLine();
        text.Append(ToMarkdownTable());
        text.AppendLine();
        string[] notes =
        [
            "Each intervention acts on the sampled token only: the prefix runs unsteered, then that token runs with "
            + "the deactivation at the predecessor's site, and the target is read at R(L) on the same token.",
            "**sampled**: (token, target) pairs; **match off**: pairs whose top-1 match at the site was not active on "
            + "the token, left out of all three rows; **n**: the rest, the same samples for every row.",
            "**success**: share of n whose target activation afterwards is ≤ ε (inactive). **Δ**: mean of "
            + "1 − after/before, not clipped (at most 1; negative where deactivating raised the target); "
            + $"`{TableFile}` also has the mean clipped to [0, 1].",
            "**top-1**: the flow map's top-1 cosine match at the site; **random**: a uniformly drawn feature active at "
            + "that site on the token; **exhaustive**: the active feature there whose deactivation lowers the target "
            + "most (an upper bound: on every sample it does at least as well as top-1 and random).",
            "**all three**: every site whose top-1 match is active, deactivated together; random takes each site's "
            + "random pick and exhaustive each site's single best, so there it bounds neither of the others.",
            "Activations are the steering hook's a(h) = JumpReLU_θ(e·h + b) (the SAE's hook form), for targets and "
            + "predecessors. For TopK SAEs the per-feature thresholds θ only approximate top-k selection; on the "
            + "sampled tokens:",
        ];
        foreach (var note in notes) text.AppendLine("- " + note);
        text.AppendLine();
        text.AppendLine("| site kind | hook-active features | TopK active | TopK features the hook fires |");
        text.AppendLine("|---|---:|---:|---:|");
        foreach (var a in Agreement)
            text.AppendLine(Invariant(
                $"| {Site.HookSuffix(a.Kind)} | {a.HookActive:F1} | {a.TopKActive:F1} | {Percent(a.TopKCovered)} |"));
        text.AppendLine();
        text.AppendLine("The paper (Gemma 2 2B, Gemma Scope SAEs) reports for top-1 cosine 65 % success and a mean "
                        + "activation change of 0.75, and for the exhaustive search 73 % and 0.83.");
        text.AppendLine();
        text.AppendLine(Invariant(
            $"Wall time {WallTime.TotalSeconds:F1} s: stories {StoriesTime.TotalSeconds:F1} s, interventions ",
            $"{EvaluationTime.TotalSeconds:F1} s ({Rows:N0} batch rows of one token after a shared prefix, ",
            $"{o.Parallelism} tokens at a time, {Provider})."));
        return text.ToString();
    }

    public string TableCsv()
    {
        var text = new StringBuilder("site,layer,sampled,match_inactive");
        foreach (var choice in new[] { "top1", "random", "exhaustive" })
            text.Append(Invariant($",{choice}_n,{choice}_success,{choice}_change,{choice}_change_clipped"));
        text.AppendLine();
        foreach (var r in Summary)
        {
            var layer = r.Layer is { } l ? l.ToString(CultureInfo.InvariantCulture) : "all";
            text.Append(Invariant($"{Name(r.Site)},{layer},{r.Sampled},{r.MatchInactive}"));
            foreach (var rate in new[] { r.Top1, r.Random, r.Exhaustive })
                text.Append(Invariant(
                    $",{rate.N},{Number(rate.Success)},{Number(rate.MeanChange)},{Number(rate.MeanChangeClipped)}"));
            text.AppendLine();
        }
        return text.ToString();
    }

    /// <summary>One line per sample; feature lists are ';'-separated paper-style ids (2/mlp/17).</summary>
    public string SamplesCsv()
    {
        var text = new StringBuilder("site,layer,sequence,position,token,target,before,matches,match_scores,"
            + "match_active,top1,top1_after,random,random_after,exhaustive,exhaustive_after\n");
        static string Ids(IEnumerable<Flow.FeatureId> ids) => string.Join(';', ids.Select(f => f.Short));
        static string Outcome(Intervention? i) => i is null ? "," : $"{Ids(i.Deactivated)},{Number(i.After)}";
        foreach (var s in Samples)
            text.AppendLine(Invariant(
                $"{Name(s.Site)},{s.Layer},{s.Sequence},{s.Position},{s.Token},{s.Target},{Number(s.Before)},",
                $"{Ids(s.Matches.Select(m => m.Feature))},{string.Join(';', s.Matches.Select(m => Number(m.Score)))},",
                $"{(s.MatchActive ? 1 : 0)},{Outcome(s.Top1)},{Outcome(s.Random)},{Outcome(s.Exhaustive)}"));
        return text.ToString();
    }

    /// <summary>Writes the table and every sample (CSV) and the report (markdown) into a folder.</summary>
    public void Write(string directory)
    {
        Directory.CreateDirectory(directory);
        File.WriteAllText(Path.Combine(directory, TableFile), TableCsv());
        File.WriteAllText(Path.Combine(directory, SamplesFile), SamplesCsv());
        File.WriteAllText(Path.Combine(directory, MarkdownFile), ToMarkdown());
    }

    private static string Name(MatchSite site) => site.ToString().ToLowerInvariant();

    private static string DeactivationText(Deactivation mode) => mode == Deactivation.Remove
        ? "Remove (RESCALE r = 0: h ← h − a(h)·v)"
        : "Zero (RESCALE r = 1 − 1/(e·v): the feature's own hook pre-activation becomes 0)";

    /// <summary>Interpolated parts in the invariant culture (decimal points in every locale).</summary>
    private static string Invariant(params FormattableString[] parts) =>
        string.Concat(parts.Select(p => p.ToString(CultureInfo.InvariantCulture)));

    private static string Percent(double share) => double.IsNaN(share) ? "–" : Invariant($"{100 * share:F1} %");

    private static string Change(double change) => double.IsNaN(change) ? "–" : Invariant($"{change:F3}");

    private static string Number(double value) =>
        double.IsNaN(value) ? "" : value.ToString("R", CultureInfo.InvariantCulture);

    private static string Number(float value) => value.ToString("R", CultureInfo.InvariantCulture);
}
