using System.Globalization;
using ScottPlot;

namespace FeatureFlow.Evaluation;

/// <summary>
/// The sweep's PNG charts (ScottPlot). Every "vs strength" chart has one line per mode and schedule, drawn at that
/// family's best layer (highest mean combined score at any strength), starting from the unsteered cell at strength
/// 0 (strength 0 is exactly the unsteered model); error bars are the 95% intervals over prompts and seeds.
/// </summary>
public static class SweepCharts
{
    private const int Width = 900, Height = 540;

    /// <summary>Writes the charts into <paramref name="directory"/> and returns their file names.</summary>
    public static IReadOnlyList<string> Write(string directory, IReadOnlyList<CellSummary> cells)
    {
        var lines = Lines(cells);
        var files = new List<string>
        {
            VsStrength(directory, "score_vs_strength.png", lines, c => c.Combined,
                "combined score (behaviour × coherence)"),
            VsStrength(directory, "behaviour_vs_strength.png", lines, c => c.Behaviour, "behaviour"),
            VsStrength(directory, "perplexity_vs_strength.png", lines, c => c.Perplexity,
                "perplexity under the unsteered model (log scale)", log: true),
        };
        if (cells.Any(c => c.JudgeScore.N > 0))
            files.Add(VsStrength(directory, "judge_vs_strength.png", lines, c => c.JudgeScore,
                "judge score (topic/5 × coherence/5)"));
        if (BestLayer(directory, cells) is { } best) files.Add(best);
        return files;
    }

    /// <summary>Per mode and schedule: the best layer's cells by strength, led by the unsteered cell.</summary>
    public static IReadOnlyList<(string Label, IReadOnlyList<CellSummary> Cells)> Lines(IReadOnlyList<CellSummary> cells)
    {
        var unsteered = cells.FirstOrDefault(c => c.Cell.Mode == SweepArm.Unsteered);
        return cells.Where(c => c.Cell.Mode != SweepArm.Unsteered)
            .GroupBy(c => (c.Cell.Mode, c.Cell.Schedule))
            .Select(g =>
            {
                var best = g.GroupBy(c => c.Cell.Layer).MaxBy(l => l.Max(c => Finite(c.Combined.Mean)))!;
                var points = best.OrderBy(c => c.Cell.Strength).ToList();
                if (unsteered is not null && points.All(c => c.Cell.Strength != 0)) points.Insert(0, unsteered);
                return (CellSummary.FamilyOf(best.First().Cell), (IReadOnlyList<CellSummary>)points);
            }).ToArray();
    }

    private static string VsStrength(string directory, string file,
        IReadOnlyList<(string Label, IReadOnlyList<CellSummary> Cells)> lines,
        Func<CellSummary, ConfidenceInterval> measure, string yLabel, bool log = false)
    {
        using var plot = new Plot();
        for (var i = 0; i < lines.Count; i++)
        {
            var (label, cells) = lines[i];
            var xs = cells.Select(c => (double)c.Cell.Strength).ToArray();
            AddSeries(plot, plot.Add.Palette.GetColor(i), label, xs, cells.Select(measure).ToArray(), log);
        }
        if (log) LogAxis(plot);
        plot.Title(yLabel + " vs strength");
        plot.XLabel("strength k (0 = unsteered, 1 = as built)");
        plot.YLabel(yLabel);
        plot.ShowLegend(Alignment.UpperLeft);
        plot.SavePng(Path.Combine(directory, file), Width, Height);
        return file;
    }

    /// <summary>Best combined score over strengths at each layer, one line per layered mode and schedule.</summary>
    private static string? BestLayer(string directory, IReadOnlyList<CellSummary> cells)
    {
        var families = cells.Where(c => c.Cell.Layer is not null && c.Cell.Mode is "single" or "cumulative")
            .GroupBy(c => (c.Cell.Mode, c.Cell.Schedule)).ToArray();
        if (families.Length == 0) return null;
        const string file = "best_layer.png";
        using var plot = new Plot();
        for (var i = 0; i < families.Length; i++)
        {
            var best = families[i].GroupBy(c => c.Cell.Layer!.Value).OrderBy(g => g.Key)
                .Select(g => (Layer: g.Key, Cell: g.MaxBy(c => Finite(c.Combined.Mean))!)).ToArray();
            AddSeries(plot, plot.Add.Palette.GetColor(i), $"{families[i].Key.Mode} {families[i].Key.Schedule}",
                best.Select(b => (double)b.Layer).ToArray(), best.Select(b => b.Cell.Combined).ToArray(), log: false);
        }
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericAutomatic { IntegerTicksOnly = true };
        plot.Title("best combined score over strengths, per layer l");
        plot.XLabel("layer l (single: nodes at l; cumulative: nodes at l_start..l)");
        plot.YLabel("best combined score");
        plot.ShowLegend(Alignment.UpperLeft);
        plot.SavePng(Path.Combine(directory, file), Width, Height);
        return file;
    }

    private static void AddSeries(Plot plot, Color color, string label, double[] xs, ConfidenceInterval[] values,
        bool log)
    {
        // On a log axis the values are log10 and the interval's ends are mapped separately (it is not symmetric there).
        double Y(double v) => log ? Math.Log10(Math.Max(v, 1e-12)) : v;
        var ys = values.Select(v => Y(v.Mean)).ToArray();
        var below = values.Select((v, k) => double.IsNaN(v.HalfWidth) ? 0 : ys[k] - Y(v.Low)).ToArray();
        var above = values.Select((v, k) => double.IsNaN(v.HalfWidth) ? 0 : Y(v.High) - ys[k]).ToArray();
        var zeros = new double[xs.Length];
        var line = plot.Add.Scatter(xs, ys, color);
        line.LegendText = label;
        line.MarkerSize = 6;
        var bars = new ScottPlot.Plottables.ErrorBar(xs, ys, zeros, zeros, above, below) { Color = color };
        plot.Add.Plottable(bars);
    }

    private static void LogAxis(Plot plot) =>
        plot.Axes.Left.TickGenerator = new ScottPlot.TickGenerators.NumericAutomatic
        {
            IntegerTicksOnly = true,
            MinorTickGenerator = new ScottPlot.TickGenerators.LogMinorTickGenerator(),
            LabelFormatter = y => Math.Pow(10, y).ToString("#,0.###", CultureInfo.InvariantCulture),
        };

    private static double Finite(double v) => double.IsNaN(v) ? double.NegativeInfinity : v;
}
