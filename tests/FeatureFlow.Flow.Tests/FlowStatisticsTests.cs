using System.Buffers.Binary;
using System.Globalization;
using FeatureFlow.Engine;

namespace FeatureFlow.Flow.Tests;

public class FlowStatisticsTests
{
    [Fact]
    public void Stats_count_every_feature_once_and_write_csv_and_valid_png()
    {
        var map = FlowMap.Build(FlowMapTests.RandomSaes(3, 8, 20, 4), 3, new CosineMatcher(new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu }));
        var stats = FlowStatistics.Compute(map, new FlowThresholds());
        Assert.All(stats, s => Assert.Equal(20, s.CategoryCounts.Sum()));
        Assert.Null(stats[0].Pair(PredecessorKind.Resid));          // layer 0 has no residual predecessor
        Assert.All(stats, s => Assert.Equal(20, s.Pair(PredecessorKind.Mlp)!.Histogram.Sum()));
        Assert.All(stats.SelectMany(s => s.Pairs), p => Assert.Equal(p.Null!.Threshold, p.Threshold));
        var strict = FlowStatistics.Compute(map, new FlowThresholds(Module: 1.01f));
        var modules = strict.SelectMany(s => s.Pairs).Where(p => p.Kind != PredecessorKind.Resid);
        Assert.All(modules, p => Assert.Equal(0, p.ShareAbove));
        var explainedByModules = strict.Sum(s => s.CategoryCounts.Where((_, c) => ((FlowCategory)c).Module() is not null).Sum());
        Assert.Equal(0, explainedByModules);

        var dir = Directory.CreateTempSubdirectory().FullName;
        FlowStatistics.Write(stats, dir);
        var csv = File.ReadAllLines(Path.Combine(dir, "categories.csv"));
        Assert.Equal("layer,translated,processed_mlp,processed_attn,processed_both,newborn_mlp,newborn_attn,newborn_both," +
            "unexplained", csv[0]);
        Assert.Equal(4, csv.Length);
        foreach (var line in csv.Skip(1))
            Assert.Equal(1.0, line.Split(',').Skip(1).Sum(v => double.Parse(v, CultureInfo.InvariantCulture)), 3);
        var chance = File.ReadAllLines(Path.Combine(dir, "chance.csv"));
        Assert.Equal(1 + 2 + 3 + 3, chance.Length);
        Assert.StartsWith("1,resid,", chance[3]);
        foreach (var png in new[] { "categories.png", "scores.png" })
        {
            var bytes = File.ReadAllBytes(Path.Combine(dir, png));
            Assert.Equal(new byte[] { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A }, bytes[..8]);
            Assert.Equal("IHDR", System.Text.Encoding.ASCII.GetString(bytes, 12, 4));
            Assert.True(BinaryPrimitives.ReadInt32BigEndian(bytes.AsSpan(16)) > 100);
            Assert.Equal("IEND", System.Text.Encoding.ASCII.GetString(bytes, bytes.Length - 8, 4));
        }
        Directory.Delete(dir, true);
    }
}
