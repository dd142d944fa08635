using System.Globalization;
using ScottPlot;

namespace FeatureFlow.Evaluation;

/// <summary>
/// A shipped pack's sweep curve (ScottPlot PNG): mean combined score vs strength with 95% intervals for the pack's
/// family, each single layer of the flow graph and the seed alone, every line starting at the unsteered cell
/// (strength 0); the chosen default strength is ringed.
/// </summary>
public static class ResultsCharts
{
    private const int Width = 1100, Height = 540;

    public static void PackCurve(string path, PackDecision decision)
    {
        var choice = decision.Choice;
        var cells = decision.Sweep.Cells;
        var pack = choice.Cells[0];
        var families = cells.Where(c => c.Cell.Mode is "single" or "baseline")
            .GroupBy(c => (c.Cell.Mode, c.Cell.Layer))
            .OrderBy(g => g.Key.Mode == "baseline").ThenBy(g => g.Key.Layer)
            .Where(g => (g.Key.Mode, g.Key.Layer) != (pack.Cell.Mode, pack.Cell.Layer))
            .Select(g => (Label: g.Key.Mode == "baseline" ? "seed alone (baseline)"
                    : g.First().Family + (decision.Sweep.SeedOnly(g.First().Cell) ? " (seed alone)" : ""),
                Cells: g.ToArray()))
            .Prepend((Label: $"{decision.Spec.Name}: {pack.Family}", Cells: choice.Cells.ToArray()))
            .ToArray();

        using var plot = new Plot();
        for (var i = 0; i < families.Length; i++)
        {
            var points = families[i].Cells.OrderBy(c => c.Cell.Strength).Prepend(choice.Unsteered).ToArray();
            var xs = points.Select(c => (double)c.Cell.Strength).ToArray();
            var ys = points.Select(c => c.Combined.Mean).ToArray();
            var errors = points.Select(c => double.IsNaN(c.Combined.HalfWidth) ? 0 : c.Combined.HalfWidth).ToArray();
            var color = plot.Add.Palette.GetColor(i);
            var line = plot.Add.Scatter(xs, ys, color);
            line.LegendText = families[i].Label;
            line.MarkerSize = 6;
            line.LineWidth = i == 0 ? 3 : 1.5f;
            plot.Add.Plottable(new ScottPlot.Plottables.ErrorBar(xs, ys, null, null, errors, errors) { Color = color });
        }
        if (choice.Chosen is { } chosen)
        {
            var marker = plot.Add.Marker(chosen.Cell.Strength, chosen.Combined.Mean, MarkerShape.OpenCircle, 18,
                plot.Add.Palette.GetColor(0));
            marker.LegendText = string.Create(CultureInfo.InvariantCulture,
                $"default strength {chosen.Cell.Strength:G4} (the ship rule)");
        }
        plot.Title($"{decision.Spec.Name}: combined score vs strength ({decision.Sweep.Theme.Name}, " +
                   $"{decision.Sweep.Sweep.Variant} units)");
        plot.XLabel("strength k (0 = unsteered, 1 = as swept)");
        plot.YLabel("combined score (behaviour × coherence)");
        // Outside the axes: the curves end anywhere, the chosen point often top right.
        plot.ShowLegend(Edge.Right);
        plot.SavePng(path, Width, Height);
    }
}
