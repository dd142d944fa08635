using System.Globalization;
using System.Text;
using FeatureFlow.Flow;
using FeatureFlow.Models;

namespace FeatureFlow.Evaluation;

/// <summary>
/// Residual-chain lengths of the flow graphs seeded at every residual feature of a flow map: how far
/// features of a dictionary are traced through depth, to compare dictionaries (widths, k) with each other.
/// </summary>
/// <param name="Counts">graphs whose chain spans 1, 2, … layers (index = length − 1)</param>
/// <param name="MeanModuleNodes">mean MLP and attention nodes per graph (the module threshold's only effect)</param>
public sealed record ChainLengths(string Map, FlowGraphOptions Options, long[] Counts, double MeanModuleNodes)
{
    public long Graphs => Counts.Sum();
    public double MeanLength => Counts.Select((c, i) => c * (i + 1.0)).Sum() / Graphs;
}

public static class FidelityChains
{
    public static ChainLengths Measure(string label, FlowMap map, FlowGraphOptions options)
    {
        var counts = new long[map.Layers];
        long modules = 0;
        for (var l = 0; l < map.Layers; l++)
            for (var f = 0; f < map.ResidFeatures(l); f++)
            {
                var graph = FlowGraph.Build(map, new FeatureId(new Site(l, SiteKind.ResidPost), f), options);
                counts[graph.LEnd - graph.LStart]++;
                modules += graph.Nodes.Count(n => n.Feature.Site.Kind != SiteKind.ResidPost);
            }
        return new ChainLengths(label, options, counts, modules / (double)counts.Sum());
    }

    /// <summary>An explicit threshold, or the flow map's per-layer chance level when none was given.</summary>
    private static string Threshold(float? value) => value?.ToString("0.###", CultureInfo.InvariantCulture) ?? "chance";

    public static string ToCsv(IEnumerable<ChainLengths> results)
    {
        var sb = new StringBuilder("map,cut,module_threshold,length,graphs\n");
        foreach (var r in results)
            for (var i = 0; i < r.Counts.Length; i++)
                sb.AppendLine(CultureInfo.InvariantCulture,
                    $"{r.Map},{Threshold(r.Options.ResidualCut)},{Threshold(r.Options.ModuleThreshold)},"
                    + $"{i + 1},{r.Counts[i]}");
        return sb.ToString();
    }

    /// <summary>A row per map: the share of graphs at each chain length, the mean, module nodes per graph.</summary>
    public static string ToMarkdown(IReadOnlyList<ChainLengths> results)
    {
        var layers = results.Max(r => r.Counts.Length);
        var sb = new StringBuilder("| flow map | cut | module threshold | graphs | ");
        sb.AppendJoin(" | ", Enumerable.Range(1, layers).Select(n => $"{n} layer{(n == 1 ? "" : "s")}"));
        sb.AppendLine(" | mean length | module nodes / graph |");
        sb.AppendLine("|---|---:|---:|---:|" + string.Concat(Enumerable.Repeat("---:|", layers + 2)));
        foreach (var r in results)
        {
            var shares = Enumerable.Range(0, layers)
                .Select(i => i < r.Counts.Length ? r.Counts[i] / (double)r.Graphs : 0);
            var columns = string.Join(" | ", shares.Select(s => s.ToString("P1", CultureInfo.InvariantCulture)));
            sb.AppendLine(CultureInfo.InvariantCulture,
                $"| {r.Map} | {Threshold(r.Options.ResidualCut)} | {Threshold(r.Options.ModuleThreshold)} | "
                + $"{r.Graphs} | {columns} | {r.MeanLength:F2} | {r.MeanModuleNodes:F2} |");
        }
        return sb.ToString();
    }
}
