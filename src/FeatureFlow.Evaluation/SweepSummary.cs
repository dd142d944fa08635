using System.Globalization;
using System.Text;

namespace FeatureFlow.Evaluation;

/// <summary>One grid cell over all its prompts and seeds: each measure's mean and 95% interval.</summary>
public sealed record CellSummary(
    CellKey Cell,
    int N,
    ConfidenceInterval Tokens,
    ConfidenceInterval Activation,
    ConfidenceInterval ActiveShare,
    ConfidenceInterval ThemeRate,
    ConfidenceInterval Perplexity,
    ConfidenceInterval Behaviour,
    ConfidenceInterval Coherence,
    ConfidenceInterval Combined,
    ConfidenceInterval JudgeScore)
{
    /// <summary>A label for tables and legends: <c>single L3 constant ×1.5</c>.</summary>
    public string Label => Cell.Mode == SweepArm.Unsteered
        ? SweepArm.Unsteered
        : string.Create(CultureInfo.InvariantCulture, $"{Family} ×{Cell.Strength:G4}");

    /// <summary>The cell without its strength: <c>single L3 constant</c>.</summary>
    public string Family => FamilyOf(Cell);

    public static string FamilyOf(CellKey cell) => string.Join(' ', new[]
    {
        cell.Mode, cell.Layer is { } l ? string.Create(CultureInfo.InvariantCulture, $"L{l}") : "", cell.Schedule,
    }.Where(s => s.Length > 0));
}

/// <summary>Pools a sweep's rows per cell, and writes the aggregated CSV.</summary>
public static class SweepSummary
{
    public const string File = "summary.csv";

    /// <summary>Cells in the order their first row appears (the plan's arm order).</summary>
    public static IReadOnlyList<CellSummary> Of(IEnumerable<SweepRow> rows) =>
        rows.GroupBy(r => r.Cell).Select(g =>
        {
            var r = g.ToArray();
            return new CellSummary(g.Key, r.Length,
                ConfidenceInterval.Of(r.Select(x => (double)x.Tokens)),
                ConfidenceInterval.Of(r.Select(x => x.Activation)),
                ConfidenceInterval.Of(r.Select(x => x.ActiveShare)),
                ConfidenceInterval.Of(r.Select(x => x.ThemeRate)),
                ConfidenceInterval.Of(r.Select(x => x.Perplexity)),
                ConfidenceInterval.Of(r.Select(x => x.Behaviour)),
                ConfidenceInterval.Of(r.Select(x => x.Coherence)),
                ConfidenceInterval.Of(r.Select(x => x.Combined)),
                ConfidenceInterval.Of(r.Select(x => x.JudgeScore)));
        }).ToArray();

    /// <summary>Per steered mode, the cell with the highest mean combined score.</summary>
    public static IReadOnlyList<CellSummary> BestPerMode(IEnumerable<CellSummary> cells) =>
        cells.Where(c => c.Cell.Mode != SweepArm.Unsteered && !double.IsNaN(c.Combined.Mean))
            .GroupBy(c => c.Cell.Mode)
            .Select(g => g.MaxBy(c => c.Combined.Mean)!)
            .ToArray();

    private static readonly string[] Measures =
    [
        "tokens", "activation", "active_share", "theme_rate", "perplexity", "behaviour", "coherence", "combined",
        "judge_score",
    ];

    public static void WriteCsv(string path, IReadOnlyList<CellSummary> cells)
    {
        var sb = new StringBuilder();
        sb.Append("mode,layer,schedule,strength,n");
        foreach (var m in Measures) sb.Append(CultureInfo.InvariantCulture, $",{m}_mean,{m}_ci95");
        sb.Append('\n');
        foreach (var c in cells)
        {
            sb.Append(string.Join(",", new[]
            {
                c.Cell.Mode, c.Cell.Layer?.ToString(CultureInfo.InvariantCulture) ?? "", c.Cell.Schedule,
                c.Cell.Strength.ToString("R", CultureInfo.InvariantCulture), c.N.ToString(CultureInfo.InvariantCulture),
            }.Select(Csv.Escape)));
            ConfidenceInterval[] measures =
            [
                c.Tokens, c.Activation, c.ActiveShare, c.ThemeRate, c.Perplexity, c.Behaviour, c.Coherence,
                c.Combined, c.JudgeScore,
            ];
            foreach (var ci in measures)
                sb.Append(CultureInfo.InvariantCulture, $",{Csv.Number(ci.Mean)},{Csv.Number(ci.HalfWidth)}");
            sb.Append('\n');
        }
        System.IO.File.WriteAllText(path, sb.ToString());
    }
}
