using System.Globalization;

namespace FeatureFlow.Evaluation;

/// <summary>Whether a claim holds on the measured cells, judged by their 95% intervals.</summary>
public enum Verdict
{
    /// <summary>The claimed-better cell's interval lies wholly above the other's.</summary>
    Holds,
    /// <summary>The claimed-better cell's interval lies wholly below the other's.</summary>
    Fails,
    /// <summary>The intervals overlap.</summary>
    Inconclusive,
    /// <summary>The sweep has nothing to compare (e.g. a one-layer graph has no cumulative span).</summary>
    NotApplicable,
}

/// <summary>A claimed-better cell against the cell it is claimed to beat, on the mean combined score.</summary>
public sealed record CellComparison(CellSummary Claimed, CellSummary Other, Verdict Verdict);

/// <summary>"Cumulative over the full span beats the best single layer" at each small strength, and overall.</summary>
public sealed record SmallStrengthVerdict(IReadOnlyList<CellComparison> PerStrength, Verdict Overall);

/// <summary>Is the best single-layer cell at the seed's layer? Holds: yes; Fails: another layer is better.</summary>
public sealed record BestLayerVerdict(CellSummary Best, CellSummary? AtSeedLayer, int SeedLayer, Verdict Verdict);

/// <summary>The three findings of the paper, judged on one sweep.</summary>
public sealed record ThemeVerdicts(SmallStrengthVerdict CumulativeAtSmallStrength, CellComparison? FlowBeatsSeed,
    BestLayerVerdict? BestLayer);

/// <summary>The cells the ship rule looked at, and the one it chose (null: none qualifies).</summary>
public sealed record StrengthChoice(string Family, CellSummary Unsteered, double MaxPerplexity,
    IReadOnlyList<CellSummary> Cells, IReadOnlyList<CellSummary> Qualifying, CellSummary? Chosen)
{
    public string Refusal => string.Create(CultureInfo.InvariantCulture,
        $"no cell of {Family} keeps mean perplexity ≤ {MaxPerplexity:G4} with mean behaviour above the unsteered " +
        $"{Unsteered.Behaviour.Mean:G4} (strengths {string.Join(", ", Cells.Select(c => c.Cell.Strength))})");
}

/// <summary>
/// Judgements over a sweep's <see cref="CellSummary"/> cells, as pure functions: the ship rule that picks a
/// pack's default strength, and the paper's findings (cumulative vs single-layer at small strength, flow graph vs
/// seed alone, best layer vs the seed's layer). Every comparison is on the mean combined score with its 95%
/// interval: a claim holds or fails only when the intervals do not overlap.
/// </summary>
public static class ResultsVerdicts
{
    /// <summary>Holds when <paramref name="claimed"/>'s interval lies above <paramref name="other"/>'s.</summary>
    public static Verdict Compare(ConfidenceInterval claimed, ConfidenceInterval other) =>
        claimed.Low > other.High ? Verdict.Holds
        : claimed.High < other.Low ? Verdict.Fails
        : Verdict.Inconclusive;

    /// <summary>
    /// The ship rule (<see cref="ShipRule"/>) over one family's cells: <paramref name="mode"/> at
    /// <paramref name="layer"/>, every strength.
    /// </summary>
    public static StrengthChoice ChooseStrength(IReadOnlyList<CellSummary> cells, string mode, int? layer,
        double maxPerplexityRatio)
    {
        var unsteered = Unsteered(cells);
        var family = cells.Where(c => c.Cell.Mode == mode && c.Cell.Layer == layer)
            .OrderBy(c => c.Cell.Strength).ToArray();
        if (family.Length == 0) throw new ArgumentException($"the sweep has no {mode} cells at layer {layer}");
        var maxPerplexity = maxPerplexityRatio * unsteered.Perplexity.Mean;
        var qualifying = family.Where(c => c.Perplexity.Mean <= maxPerplexity
                                           && c.Behaviour.Mean > unsteered.Behaviour.Mean).ToArray();
        // Highest combined first; among equals the smaller strength, the gentler intervention.
        var chosen = qualifying.OrderByDescending(c => c.Combined.Mean).ThenBy(c => c.Cell.Strength).FirstOrDefault();
        return new StrengthChoice(family[0].Family, unsteered, maxPerplexity, family, qualifying, chosen);
    }

    /// <summary>
    /// The paper's findings on one sweep of a graph spanning <paramref name="lStart"/>..<paramref name="lEnd"/> with
    /// its seed at <paramref name="seedLayer"/>. <paramref name="seedOnly"/> says which single/cumulative families
    /// steer nothing but the seed (they are the baseline under another name, so they do not count as flow-graph
    /// cells). <paramref name="smallStrengths"/>: how many of the smallest strengths the first finding is judged at.
    /// </summary>
    public static ThemeVerdicts Judge(IReadOnlyList<CellSummary> cells, int lStart, int lEnd, int seedLayer,
        Func<CellKey, bool> seedOnly, int smallStrengths)
    {
        var steered = cells.Where(c => c.Cell.Mode != SweepArm.Unsteered && !double.IsNaN(c.Combined.Mean)).ToArray();
        var single = steered.Where(c => c.Cell.Mode == "single").ToArray();
        var baseline = steered.Where(c => c.Cell.Mode == "baseline").ToArray();

        var perStrength = new List<CellComparison>();
        if (lEnd > lStart)
            foreach (var k in steered.Select(c => c.Cell.Strength).Distinct().Order().Take(smallStrengths))
            {
                var cumulative = steered.FirstOrDefault(c =>
                    c.Cell.Mode == "cumulative" && c.Cell.Layer == lEnd && c.Cell.Strength == k);
                var bestSingle = single.Where(c => c.Cell.Strength == k).MaxBy(c => c.Combined.Mean);
                if (cumulative is not null && bestSingle is not null)
                    perStrength.Add(new CellComparison(cumulative, bestSingle,
                        Compare(cumulative.Combined, bestSingle.Combined)));
            }
        var overall = perStrength.Count == 0 ? Verdict.NotApplicable
            : perStrength.Any(c => c.Verdict == Verdict.Holds) && perStrength.All(c => c.Verdict != Verdict.Fails)
                ? Verdict.Holds
            : perStrength.Any(c => c.Verdict == Verdict.Fails) && perStrength.All(c => c.Verdict != Verdict.Holds)
                ? Verdict.Fails
            : Verdict.Inconclusive;

        var bestFlow = steered.Where(c => c.Cell.Mode is "single" or "cumulative" && !seedOnly(c.Cell))
            .MaxBy(c => c.Combined.Mean);
        var bestBaseline = baseline.MaxBy(c => c.Combined.Mean);
        var flowBeatsSeed = bestFlow is null || bestBaseline is null
            ? null
            : new CellComparison(bestFlow, bestBaseline, Compare(bestFlow.Combined, bestBaseline.Combined));

        BestLayerVerdict? bestLayer = null;
        if (single.MaxBy(c => c.Combined.Mean) is { } best)
        {
            var atSeed = single.Where(c => c.Cell.Layer == seedLayer).MaxBy(c => c.Combined.Mean);
            var verdict = best.Cell.Layer == seedLayer ? Verdict.Holds
                : atSeed is null ? Verdict.Fails
                : Compare(best.Combined, atSeed.Combined) == Verdict.Holds ? Verdict.Fails
                : Verdict.Inconclusive;
            bestLayer = new BestLayerVerdict(best, atSeed, seedLayer, verdict);
        }
        return new ThemeVerdicts(new SmallStrengthVerdict(perStrength, overall), flowBeatsSeed, bestLayer);
    }

    public static CellSummary Unsteered(IReadOnlyList<CellSummary> cells) =>
        cells.FirstOrDefault(c => c.Cell.Mode == SweepArm.Unsteered)
        ?? throw new ArgumentException("the sweep has no unsteered cell");
}
