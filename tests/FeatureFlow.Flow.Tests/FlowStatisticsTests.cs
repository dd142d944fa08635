using System.Buffers.Binary;
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
        Assert.Equal(0, stats[0].Histograms[0].Sum());          // layer 0 has no residual predecessor
        Assert.All(stats, s => Assert.Equal(20, s.Histograms[1].Sum()));

        var dir = Directory.CreateTempSubdirectory().FullName;
        FlowStatistics.Write(stats, dir);
        var csv = File.ReadAllLines(Path.Combine(dir, "categories.csv"));
        Assert.Equal(4, csv.Length);
        foreach (var line in csv.Skip(1))
            Assert.Equal(1.0, line.Split(',').Skip(1).Sum(v => double.Parse(v, System.Globalization.CultureInfo.InvariantCulture)), 3);
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
