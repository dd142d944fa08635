using System.Globalization;
using System.Text;
using FeatureFlow.Models;
using ScottPlot;

namespace FeatureFlow.Flow;

/// <summary>
/// <c>featureflow flow stats</c>: per-layer category shares, predecessor-score histograms against their
/// chance level, as CSV and PNG charts.
/// </summary>
public static class FlowStatistics
{
    public const int Bins = 20;
    private static readonly PredecessorKind[] Kinds = Enum.GetValues<PredecessorKind>();

    /// <summary>Greens for translated, blues for processed, oranges for newborn, grey for unexplained.</summary>
    private static readonly string[] CategoryColours =
        ["#52b788", "#1d4e89", "#4f8fd6", "#a9cbf0", "#c1580b", "#f0962e", "#f7c98b", "#b4b4b4"];

    /// <summary>
    /// The best cosines of one predecessor kind at one layer: their histogram (<see cref="Bins"/> bins over
    /// [0, 1]), the threshold the categories used and where it came from, the null (if the map has one),
    /// and the observed mean, median and share at or above the threshold.
    /// </summary>
    public sealed record PairStats(PredecessorKind Kind, int[] Histogram, float Threshold, string ThresholdSource,
        NullDistribution? Null, double ObservedMean, double ObservedMedian, double ShareAbove);

    /// <summary>
    /// One layer: counts per <see cref="FlowCategory"/> (in enum order) and a <see cref="PairStats"/> per kind
    /// (no resid at layer 0).
    /// </summary>
    public sealed record LayerStats(int Layer, int[] CategoryCounts, IReadOnlyList<PairStats> Pairs)
    {
        public PairStats? Pair(PredecessorKind kind) => Pairs.FirstOrDefault(p => p.Kind == kind);
    }

    public static IReadOnlyList<LayerStats> Compute(FlowMap map, FlowThresholds thresholds)
    {
        var result = new List<LayerStats>();
        for (var l = 0; l < map.Layers; l++)
        {
            var categories = new int[FlowCategories.All.Count];
            var scores = Kinds.ToDictionary(k => k, _ => new List<float>());
            for (var f = 0; f < map.ResidFeatures(l); f++)
            {
                var p = map.Explain(new FeatureId(new Site(l, SiteKind.ResidPost), f));
                categories[(int)map.Category(p, thresholds)]++;
                if (p.Resid is { } r) scores[PredecessorKind.Resid].Add(r.Score);
                scores[PredecessorKind.Mlp].Add(p.Mlp.Score);
                scores[PredecessorKind.Attn].Add(p.Attn.Score);
            }
            var pairs = Kinds.Where(k => scores[k].Count > 0).Select(k =>
            {
                var values = scores[k];
                var histogram = new int[Bins];
                foreach (var v in values) histogram[Bin(v)]++;
                var threshold = map.Threshold(l, k, thresholds);
                var source = map.ThresholdSource(k == PredecessorKind.Resid ? thresholds.Residual : thresholds.Module);
                return new PairStats(k, histogram, threshold, source, map.Null(l, k), values.Average(v => (double)v),
                    ChanceLevel.Percentile(values.ToArray(), 50), values.Count(v => v >= threshold) / (double)values.Count);
            }).ToArray();
            result.Add(new LayerStats(l, categories, pairs));
        }
        return result;
    }

    /// <summary>Cosine in [−1, 1] → one of <see cref="Bins"/> bins over [0, 1] (negative scores fall in the first).</summary>
    public static int Bin(float score) => Math.Clamp((int)(score * Bins), 0, Bins - 1);

    private static string Name(PredecessorKind kind) => kind.ToString().ToLowerInvariant();

    /// <summary>Writes categories.csv/.png, scores.csv/.png and chance.csv.</summary>
    public static void Write(IReadOnlyList<LayerStats> stats, string directory)
    {
        Directory.CreateDirectory(directory);
        string F(double v) => v.ToString("F4", CultureInfo.InvariantCulture);
        var names = FlowCategories.All.Select(c => c.Name().Replace('-', '_'));
        var categories = new StringBuilder("layer," + string.Join(",", names) + "\n");
        var scores = new StringBuilder("layer,predecessor,bin_low,bin_high,count,share,null_share\n");
        var chance = new StringBuilder("layer,predecessor,null_mean,null_threshold,threshold,threshold_source," +
            "observed_mean,observed_median,share_above_threshold\n");
        foreach (var s in stats)
        {
            var total = (double)s.CategoryCounts.Sum();
            var layer = s.Layer.ToString(CultureInfo.InvariantCulture);
            categories.AppendLine(string.Join(",", s.CategoryCounts.Select(c => F(c / total)).Prepend(layer)));
            foreach (var p in s.Pairs)
            {
                var observed = (double)p.Histogram.Sum();
                var nullTotal = p.Null?.Histogram.Sum() ?? 0;
                for (var b = 0; b < Bins; b++)
                {
                    var nullShare = p.Null is { } n ? F(n.Histogram[b] / (double)nullTotal) : "";
                    var bounds = string.Create(CultureInfo.InvariantCulture, $"{b / (double)Bins:F2},{(b + 1) / (double)Bins:F2}");
                    var share = F(p.Histogram[b] / observed);
                    scores.AppendLine($"{layer},{Name(p.Kind)},{bounds},{p.Histogram[b]},{share},{nullShare}");
                }
                string[] row =
                [
                    layer, Name(p.Kind), p.Null is { } m ? F(m.Mean) : "", p.Null is { } t ? F(t.Threshold) : "", F(p.Threshold),
                    p.ThresholdSource, F(p.ObservedMean), F(p.ObservedMedian), F(p.ShareAbove),
                ];
                chance.AppendLine(string.Join(",", row));
            }
        }
        File.WriteAllText(Path.Combine(directory, "categories.csv"), categories.ToString());
        File.WriteAllText(Path.Combine(directory, "scores.csv"), scores.ToString());
        File.WriteAllText(Path.Combine(directory, "chance.csv"), chance.ToString());
        File.WriteAllBytes(Path.Combine(directory, "categories.png"), CategoryChart(stats));
        File.WriteAllBytes(Path.Combine(directory, "scores.png"), ScoreChart(stats));
    }

    /// <summary>Stacked bars: the share of each category per layer.</summary>
    public static byte[] CategoryChart(IReadOnlyList<LayerStats> stats)
    {
        var plot = new Plot();
        var bars = new List<Bar>();
        foreach (var s in stats)
        {
            var total = (double)s.CategoryCounts.Sum();
            var bottom = 0.0;
            for (var c = 0; c < s.CategoryCounts.Length; c++)
            {
                var share = 100 * s.CategoryCounts[c] / total;
                bars.Add(new Bar
                {
                    Position = s.Layer, ValueBase = bottom, Value = bottom + share,
                    FillColor = Color.FromHex(CategoryColours[c]), LineWidth = 0,
                });
                bottom += share;
            }
        }
        plot.Add.Bars(bars);
        foreach (var c in FlowCategories.All.Reverse()) // top of the stack first, as the bars read
            plot.Legend.ManualItems.Add(new LegendItem
            {
                LabelText = c.Name(), FillColor = Color.FromHex(CategoryColours[(int)c]),
            });
        plot.ShowLegend(Edge.Right);
        plot.Axes.Bottom.SetTicks([.. stats.Select(s => (double)s.Layer)], [.. stats.Select(s => $"L{s.Layer}")]);
        plot.Axes.SetLimits(-0.6, stats.Count - 0.4, 0, 100);
        plot.Title("category share per layer");
        plot.YLabel("% of residual features");
        var sources = stats.SelectMany(s => s.Pairs).Select(p => p.ThresholdSource).Distinct().ToArray();
        plot.XLabel("thresholds: " + string.Join("; ", sources));
        return plot.GetImageBytes(760 + 12 * stats.Count, 440, ImageFormat.Png);
    }

    /// <summary>
    /// One panel per layer (rows) and predecessor kind (columns): the share of features per score bin, the
    /// null's shares as a step line, and the threshold as a dashed line.
    /// </summary>
    public static byte[] ScoreChart(IReadOnlyList<LayerStats> stats)
    {
        var multiplot = new Multiplot();
        multiplot.AddPlots(stats.Count * Kinds.Length);
        multiplot.Layout = new ScottPlot.MultiplotLayouts.Grid(stats.Count, Kinds.Length);
        for (var row = 0; row < stats.Count; row++)
            for (var col = 0; col < Kinds.Length; col++)
            {
                var plot = multiplot.GetPlot(row * Kinds.Length + col);
                var kind = Kinds[col];
                var layer = stats[row].Layer;
                var source = kind switch
                {
                    PredecessorKind.Resid => $"R({layer - 1})", PredecessorKind.Mlp => $"M({layer})", _ => $"A({layer})",
                };
                plot.Title($"best cosine {source} -> R({layer})", 12);
                plot.Axes.SetLimits(0, 1, 0, 100);
                if (stats[row].Pair(kind) is not { } p)
                {
                    plot.Add.Text("layer 0 has no R(-1) SAE", 0.1, 50);
                    continue;
                }
                var observed = (double)p.Histogram.Sum();
                var shares = p.Histogram.Select(c => 100 * c / observed).ToArray();
                plot.Add.Bars(Enumerable.Range(0, Bins).Select(b => new Bar
                {
                    Position = (b + 0.5) / Bins, Value = shares[b], Size = 0.9 / Bins,
                    FillColor = Color.FromHex("#4287f5"), LineWidth = 0,
                }).ToList());
                var top = shares.Max();
                if (p.Null is { } n)
                {
                    var nullTotal = (double)n.Histogram.Sum();
                    var nullShares = n.Histogram.Select(c => 100 * c / nullTotal).ToArray();
                    var xs = Enumerable.Range(0, Bins + 1).Select(b => b / (double)Bins).ToArray();
                    var line = plot.Add.ScatterLine(xs, nullShares.Append(nullShares[^1]).ToArray(), Colors.Black);
                    line.ConnectStyle = ConnectStyle.StepHorizontal;
                    line.LegendText = "null";
                    top = Math.Max(top, nullShares.Max());
                }
                var cut = plot.Add.VerticalLine(p.Threshold, 2, Colors.Red, LinePattern.Dashed);
                cut.LegendText = string.Create(CultureInfo.InvariantCulture, $"threshold {p.Threshold:F2}");
                plot.ShowLegend(Alignment.UpperRight);
                plot.Axes.SetLimits(0, 1, 0, 1.1 * top);
                plot.YLabel("% of features", 11);
            }
        return multiplot.Render(3 * 340, stats.Count * 200).GetImageBytes(ImageFormat.Png);
    }
}
