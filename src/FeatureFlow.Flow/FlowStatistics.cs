using System.Globalization;
using System.Text;
using FeatureFlow.Models;

namespace FeatureFlow.Flow;

/// <summary><c>featureflow flow stats</c>: per-layer category shares and score histograms, as CSV and PNG charts.</summary>
public static class FlowStatistics
{
    public const int Bins = 20;
    private static readonly (byte, byte, byte)[] CategoryColours = [(82, 183, 136), (66, 135, 245), (245, 166, 35), (180, 180, 180)];
    private static readonly string[] Kinds = ["resid", "mlp", "attn"];

    public sealed record LayerStats(int Layer, int[] CategoryCounts, int[][] Histograms);

    public static IReadOnlyList<LayerStats> Compute(FlowMap map, FlowThresholds thresholds)
    {
        var result = new List<LayerStats>();
        for (var l = 0; l < map.Layers; l++)
        {
            var categories = new int[4];
            var histograms = Kinds.Select(_ => new int[Bins]).ToArray();
            for (var f = 0; f < map.ResidFeatures(l); f++)
            {
                var p = map.Explain(new FeatureId(new Site(l, SiteKind.ResidPost), f));
                categories[(int)map.Category(p, thresholds)]++;
                if (p.Resid is { } r) histograms[0][Bin(r.Score)]++;
                histograms[1][Bin(p.Mlp.Score)]++;
                histograms[2][Bin(p.Attn.Score)]++;
            }
            result.Add(new LayerStats(l, categories, histograms));
        }
        return result;
    }

    /// <summary>Cosine in [−1, 1] → one of <see cref="Bins"/> bins over [0, 1] (negative scores fall in the first).</summary>
    private static int Bin(float score) => Math.Clamp((int)(score * Bins), 0, Bins - 1);

    public static void Write(IReadOnlyList<LayerStats> stats, string directory)
    {
        Directory.CreateDirectory(directory);
        var categories = new StringBuilder("layer,translated,processed,newborn,unexplained\n");
        var scores = new StringBuilder("layer,predecessor,bin_low,bin_high,count\n");
        foreach (var s in stats)
        {
            var total = (double)s.CategoryCounts.Sum();
            categories.AppendLine(string.Join(",", new[] { s.Layer.ToString(CultureInfo.InvariantCulture) }.Concat(s.CategoryCounts.Select(c => (c / total).ToString("F4", CultureInfo.InvariantCulture)))));
            for (var k = 0; k < Kinds.Length; k++)
                for (var b = 0; b < Bins; b++)
                    scores.AppendLine(string.Create(CultureInfo.InvariantCulture, $"{s.Layer},{Kinds[k]},{b / (double)Bins:F2},{(b + 1) / (double)Bins:F2},{s.Histograms[k][b]}"));
        }
        File.WriteAllText(Path.Combine(directory, "categories.csv"), categories.ToString());
        File.WriteAllText(Path.Combine(directory, "scores.csv"), scores.ToString());
        File.WriteAllBytes(Path.Combine(directory, "categories.png"), CategoryChart(stats).ToPng());
        File.WriteAllBytes(Path.Combine(directory, "scores.png"), ScoreChart(stats).ToPng());
    }

    private static Raster CategoryChart(IReadOnlyList<LayerStats> stats)
    {
        const int barW = 60, gap = 30, left = 60, top = 40, plotH = 300;
        var raster = new Raster(left + stats.Count * (barW + gap) + 170, top + plotH + 60);
        raster.Text(left, 12, "category share per layer", 2);
        raster.Fill(left - 2, top, 2, plotH, (60, 60, 60));
        for (var t = 0; t <= 4; t++) raster.Text(10, top + plotH - t * plotH / 4 - 3, $"{t * 25}%");
        foreach (var s in stats)
        {
            var x = left + gap / 2 + s.Layer * (barW + gap);
            var total = (double)s.CategoryCounts.Sum();
            var y = top + plotH;
            for (var c = 0; c < 4; c++)
            {
                var h = (int)Math.Round(plotH * s.CategoryCounts[c] / total);
                raster.Fill(x, y - h, barW, h, CategoryColours[c]);
                y -= h;
            }
            raster.Text(x + barW / 2 - 9, top + plotH + 8, $"L{s.Layer}", 2);
        }
        var lx = left + stats.Count * (barW + gap) + 10;
        string[] names = ["translated", "processed", "newborn", "unexplained"];
        for (var c = 0; c < 4; c++)
        {
            raster.Fill(lx, top + c * 24, 14, 14, CategoryColours[c]);
            raster.Text(lx + 20, top + c * 24 + 4, names[c]);
        }
        return raster;
    }

    private static Raster ScoreChart(IReadOnlyList<LayerStats> stats)
    {
        const int panelW = 320, panelH = 200, left = 40, top = 40, barW = 14;
        var raster = new Raster(left + Kinds.Length * (panelW + 30), top + panelH + 50);
        raster.Text(left, 12, "top-1 cosine of predecessors (all layers)", 2);
        for (var k = 0; k < Kinds.Length; k++)
        {
            var counts = Enumerable.Range(0, Bins).Select(b => stats.Sum(s => s.Histograms[k][b])).ToArray();
            var max = Math.Max(1, counts.Max());
            var x0 = left + k * (panelW + 30);
            raster.Fill(x0, top + panelH, Bins * (barW + 1), 2, (60, 60, 60));
            for (var b = 0; b < Bins; b++)
            {
                var h = (int)Math.Round(panelH * counts[b] / (double)max);
                raster.Fill(x0 + b * (barW + 1), top + panelH - h, barW, h, (66, 135, 245));
            }
            raster.Text(x0, top + panelH + 8, "0");
            raster.Text(x0 + Bins * (barW + 1) / 2 - 9, top + panelH + 8, "0.5");
            raster.Text(x0 + Bins * (barW + 1) - 6, top + panelH + 8, "1");
            raster.Text(x0, top + panelH + 24, $"{Kinds[k]} (max {max})", 2);
        }
        return raster;
    }
}
