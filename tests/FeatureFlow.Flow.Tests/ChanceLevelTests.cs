using FeatureFlow.Engine;
using FeatureFlow.Models;
using FeatureFlow.Models.Folder;
using FeatureFlow.Models.Formats;
using FeatureFlow.Sae;

namespace FeatureFlow.Flow.Tests;

public class ChanceLevelTests
{
    private static readonly EngineOptions Cpu = new() { ExecutionProvider = ExecutionProviderPreference.Cpu };

    private static float[] Gaussian(Random rng, int count)
    {
        var x = new float[count];
        for (var i = 0; i < count; i++)
            x[i] = (float)(Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));
        return x;
    }

    private static double Dot(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        double s = 0;
        for (var i = 0; i < a.Length; i++) s += (double)a[i] * b[i];
        return s;
    }

    /// <summary>
    /// Distribution of the best cosine of a fixed direction among n independent uniform directions in d
    /// dimensions: one cosine has density ∝ (1 − c²)^((d−3)/2), so P(best ≤ x) = F(x)ⁿ. F by the trapezoid
    /// rule on a fine grid, in double.
    /// </summary>
    private static (double[] Grid, double[] BestCdf) BestCosineCdf(int d, int n, int steps = 200_000)
    {
        var grid = new double[steps + 1];
        var cdf = new double[steps + 1];
        double Density(double c) => Math.Pow(Math.Max(0, 1 - c * c), (d - 3) / 2.0);
        for (var i = 0; i <= steps; i++) grid[i] = -1 + 2.0 * i / steps;
        for (var i = 1; i <= steps; i++)
            cdf[i] = cdf[i - 1] + (Density(grid[i - 1]) + Density(grid[i])) / 2 * (grid[i] - grid[i - 1]);
        var best = cdf.Select(c => Math.Pow(c / cdf[steps], n)).ToArray();
        return (grid, best);
    }

    [Theory]
    [InlineData(7)]
    [InlineData(64)]
    public void A_rotation_is_orthogonal_and_keeps_norms_and_mutual_cosines(int d)
    {
        var q = ChanceLevel.RandomRotation(d, 3);
        for (var i = 0; i < d; i++)
            for (var j = 0; j < d; j++)
            {
                double qtq = 0;
                for (var k = 0; k < d; k++) qtq += (double)q[k * d + i] * q[k * d + j];
                Assert.Equal(i == j ? 1.0 : 0.0, qtq, 1e-5);
            }
        var rows = Gaussian(new Random(1), 3 * d);
        var rotated = ChanceLevel.Rotate(rows, d, q);
        for (var a = 0; a < 3; a++)
            for (var b = 0; b < 3; b++)
                Assert.Equal(Dot(rows.AsSpan(a * d, d), rows.AsSpan(b * d, d)),
                    Dot(rotated.AsSpan(a * d, d), rotated.AsSpan(b * d, d)), 1e-3);
        Assert.NotEqual(rows, rotated);
    }

    [Fact]
    public void Rotations_are_fixed_by_the_seed()
    {
        Assert.Equal(ChanceLevel.RandomRotation(16, 5), ChanceLevel.RandomRotation(16, 5));
        Assert.NotEqual(ChanceLevel.RandomRotation(16, 5), ChanceLevel.RandomRotation(16, 6));
        var options = new ChanceLevelOptions { Rotations = 3, Seed = 9 };
        Assert.Equal(new ChanceLevel(16, options).Rotations, new ChanceLevel(16, options).Rotations);
    }

    [Fact]
    public void Null_of_independent_gaussian_decoders_is_the_analytic_best_cosine_and_equals_the_observed()
    {
        const int d = 16, m = 1000, n = 128;
        var rng = new Random(17);
        var targets = Gaussian(rng, m * d);
        var sources = Gaussian(rng, n * d);
        using var matcher = new CosineMatcher(Cpu);
        var chance = new ChanceLevel(d, new ChanceLevelOptions { Rotations = 8 });
        var estimate = chance.Estimate(matcher, targets, sources);

        var (grid, cdf) = BestCosineCdf(d, n);
        var p99 = grid[Array.FindIndex(cdf, c => c >= 0.99)];
        double mean = 0;
        for (var i = 1; i < grid.Length; i++) mean += (grid[i] + grid[i - 1]) / 2 * (cdf[i] - cdf[i - 1]);
        Assert.Equal(p99, estimate.Threshold, 0.01);
        Assert.Equal(mean, estimate.Mean, 0.005);
        Assert.Equal(m * 8, estimate.Histogram.Sum());

        // Independent decoders have nothing to align: what the flow map observes is itself a null sample.
        var observed = matcher.Match(targets, sources, d).Backward.Score;
        Assert.Equal(estimate.Mean, observed.Average(s => (double)s), 0.01);
        Assert.Equal(estimate.Threshold, ChanceLevel.Percentile(observed, 99), 0.03);
    }

    [Fact]
    public void A_slightly_rotated_noisy_copy_of_the_source_is_far_above_its_null()
    {
        const int d = 32, n = 256;
        var rng = new Random(23);
        var sources = Gaussian(rng, n * d);
        var permutation = Enumerable.Range(0, n).OrderBy(_ => rng.Next()).ToArray();
        var targets = new float[n * d];
        var noise = Gaussian(rng, n * d);
        var (cos, sin) = (MathF.Cos(0.3f), MathF.Sin(0.3f));
        for (var i = 0; i < n; i++)
        {
            var row = targets.AsSpan(i * d, d);
            sources.AsSpan(permutation[i] * d, d).CopyTo(row);
            for (var plane = 0; plane < d; plane += 2) // a rotation by 0.3 rad in d/2 coordinate planes: cos 0.955
            {
                var (x, y) = (row[plane], row[plane + 1]);
                (row[plane], row[plane + 1]) = (cos * x - sin * y, sin * x + cos * y);
            }
            for (var c = 0; c < d; c++) row[c] += 0.2f * noise[i * d + c];
        }
        using var matcher = new CosineMatcher(Cpu);
        var estimate = new ChanceLevel(d, new ChanceLevelOptions()).Estimate(matcher, targets, sources);
        var observed = matcher.Match(targets, sources, d).Backward;

        Assert.Equal(permutation, observed.Index);
        Assert.InRange(estimate.Threshold, 0.45, 0.75);
        var lowest = ChanceLevel.Percentile(observed.Score, 1);
        Assert.True(lowest > estimate.Threshold + 0.15, $"observed 1st percentile {lowest:F3}, null p99 {estimate.Threshold:F3}");
        Assert.True(observed.Score.Average() > estimate.Mean + 0.4);
    }

    [Fact]
    public void Percentile_interpolates_between_order_statistics()
    {
        float[] values = [4, 1, 3, 2, 5];
        Assert.Equal(3, ChanceLevel.Percentile(values, 50));
        Assert.Equal(4.96, ChanceLevel.Percentile(values, 99), 1e-6);
        Assert.Equal(1.04, ChanceLevel.Percentile(values, 1), 1e-6);
    }

    /// <summary>
    /// Two layers of random 64-wide SAEs (48 features each); R(1) features 0..7 are planted as sums of
    /// predecessors, so each lands in one category; the rest are random.
    /// </summary>
    private static SaeSet PlantedSaes()
    {
        const int d = 64;
        var saes = FlowMapTests.RandomSaes(2, d, 48, 31);
        float[] Row(SiteKind kind, int layer, int index)
        {
            var row = saes.BySite[new Site(layer, kind)].Decoder.AsSpan(index * d, d).ToArray();
            var norm = MathF.Sqrt(row.Sum(v => v * v));
            return row.Select(v => v / norm).ToArray();
        }
        void Plant(int feature, params float[][] parts)
        {
            var target = saes.BySite[new Site(1, SiteKind.ResidPost)].Decoder.AsSpan(feature * d, d);
            target.Clear();
            foreach (var p in parts)
                for (var c = 0; c < d; c++) target[c] += p[c];
        }
        Plant(0, Row(SiteKind.ResidPost, 0, 0));
        Plant(1, Row(SiteKind.ResidPost, 0, 1), Row(SiteKind.MlpOut, 1, 1));
        Plant(2, Row(SiteKind.ResidPost, 0, 2), Row(SiteKind.AttnOut, 1, 2));
        Plant(3, Row(SiteKind.ResidPost, 0, 3), Row(SiteKind.MlpOut, 1, 3), Row(SiteKind.AttnOut, 1, 3));
        Plant(4, Row(SiteKind.MlpOut, 1, 4));
        Plant(5, Row(SiteKind.AttnOut, 1, 5));
        Plant(6, Row(SiteKind.MlpOut, 1, 6), Row(SiteKind.AttnOut, 1, 6));
        return saes;
    }

    private static readonly FlowCategory[] Planted =
    [
        FlowCategory.Translated, FlowCategory.ProcessedMlp, FlowCategory.ProcessedAttn, FlowCategory.ProcessedBoth,
        FlowCategory.NewbornMlp, FlowCategory.NewbornAttn, FlowCategory.NewbornBoth, FlowCategory.Unexplained,
    ];

    [Fact]
    public void Categories_land_where_planted_with_the_chance_level_and_explicit_values_override_it()
    {
        using var matcher = new CosineMatcher(Cpu);
        var map = FlowMap.Build(PlantedSaes(), 2, matcher);
        FlowCategory Category(int f, FlowThresholds t) =>
            map.Category(map.Explain(new FeatureId(new Site(1, SiteKind.ResidPost), f)), t);

        Assert.True(map.HasChanceLevel);
        foreach (var kind in Enum.GetValues<PredecessorKind>())
        {
            Assert.Equal(map.Null(1, kind)!.Threshold, map.Threshold(1, kind, new FlowThresholds()));
            Assert.InRange(map.Null(1, kind)!.Threshold, 0.3, 0.55);
        }
        Assert.Null(map.Null(0, PredecessorKind.Resid));
        Assert.Equal(Planted, Enumerable.Range(0, 8).Select(f => Category(f, new FlowThresholds())));
        Assert.Equal("processed-mlp", FlowCategory.ProcessedMlp.Name());
        Assert.Equal("newborn", FlowCategory.NewbornBoth.Group());

        // Explicit values replace the chance level: no mixed module match reaches 0.9, every residual one reaches −1.
        Assert.Equal(FlowCategory.Translated, Category(1, new FlowThresholds(Module: 0.9f)));
        Assert.Equal(FlowCategory.Unexplained, Category(6, new FlowThresholds(Module: 0.9f)));
        Assert.Equal(FlowCategory.ProcessedMlp, Category(4, new FlowThresholds(Residual: -1f)));

        // The artefact the chance level removes: at the absolute module threshold 0.3 many random features
        // look "newborn" in d = 64, at the chance level about 1 % per module do.
        int Explained(FlowThresholds t) => Enumerable.Range(8, 40).Count(f => Category(f, t) != FlowCategory.Unexplained);
        var (absolute, relative) = (Explained(new FlowThresholds(0.5f, 0.3f)), Explained(new FlowThresholds()));
        Assert.True(absolute >= 10, $"{absolute} of 40 at 0.3");
        Assert.True(relative <= 3, $"{relative} of 40 at the chance level");
    }

    [Fact]
    public void The_chance_level_is_deterministic_for_a_seed_and_survives_a_round_trip()
    {
        var saes = FlowMapTests.RandomSaes(3, 16, 40, 8);
        using var matcher = new CosineMatcher(Cpu);
        static IEnumerable<KeyValuePair<string, string>> Chance(FlowMap m) =>
            m.Metadata.Where(kv => kv.Key.StartsWith("chance.", StringComparison.Ordinal));
        var a = FlowMap.Build(saes, 3, matcher);
        var b = FlowMap.Build(saes, 3, matcher);
        Assert.Equal(Chance(a), Chance(b));
        var other = FlowMap.Build(saes, 3, matcher, chance: new ChanceLevelOptions { Seed = 1 });
        Assert.NotEqual(a.Null(2, PredecessorKind.Mlp)!.Threshold, other.Null(2, PredecessorKind.Mlp)!.Threshold);
        Assert.Equal(a.Null(2, PredecessorKind.Mlp)!.Threshold, other.Null(2, PredecessorKind.Mlp)!.Threshold, 0.1);

        var path = Path.GetTempFileName();
        a.Save(path);
        var loaded = FlowMap.Load(path);
        File.Delete(path);
        Assert.Equal(a.ChanceOptions, loaded.ChanceOptions);
        for (var l = 0; l < 3; l++)
            foreach (var kind in Enum.GetValues<PredecessorKind>().Where(k => l > 0 || k != PredecessorKind.Resid))
            {
                var (x, y) = (a.Null(l, kind)!, loaded.Null(l, kind)!);
                Assert.Equal((x.Mean, x.Threshold), (y.Mean, y.Threshold));
                Assert.Equal(x.Histogram, y.Histogram);
            }
    }

    [Fact]
    public void A_map_written_without_a_chance_level_falls_back_or_gets_it_from_its_own_saes()
    {
        var saes = FlowMapTests.RandomSaes(2, 16, 30, 12);
        using var matcher = new CosineMatcher(Cpu);
        var built = FlowMap.Build(saes, 2, matcher);
        var path = Path.GetTempFileName();
        built.Save(path);
        var file = SafeTensorsFile.Read(path);
        var writer = new SafeTensorsWriter();
        foreach (var (k, v) in file.Metadata.Where(kv => !kv.Key.StartsWith("chance.", StringComparison.Ordinal)))
            writer.Metadata(k, v);
        foreach (var name in file.Tensors.Keys)
            if (name.EndsWith(".index", StringComparison.Ordinal))
                writer.AddInt32(name, file.GetInt32(name), file.Entry(name).Shape);
            else
                writer.AddFloat32(name, file.GetFloat32(name), file.Entry(name).Shape);
        writer.Write(path);
        var old = FlowMap.Load(path);
        File.Delete(path);

        Assert.False(old.HasChanceLevel);
        Assert.Equal(FlowThresholds.AbsoluteModule, old.Threshold(1, PredecessorKind.Mlp, new FlowThresholds()));
        Assert.Equal(FlowGraphOptions.AbsoluteModuleThreshold,
            old.Threshold(1, PredecessorKind.Attn, null, FlowGraphOptions.AbsoluteModuleThreshold));
        Assert.StartsWith("absolute fallback", old.ThresholdSource(null));

        var upgraded = old.WithChanceLevel(saes, matcher);
        Assert.True(upgraded.HasChanceLevel);
        Assert.Equal(built.Null(1, PredecessorKind.Attn)!.Threshold, upgraded.Null(1, PredecessorKind.Attn)!.Threshold);
        Assert.StartsWith("chance level (p99 of 4 rotations)", upgraded.ThresholdSource(null));
        var others = FlowMapTests.RandomSaes(2, 16, 30, 13);
        var e = Assert.Throws<InvalidDataException>(() => old.WithChanceLevel(others, matcher));
        Assert.Contains("not the one this flow map was built from", e.Message);
    }

    [Fact]
    public void The_shipped_flow_map_stores_the_chance_level_that_flow_build_computes()
    {
        var folder = ModelFolder.Open(RepoPaths.Stories260kModel);
        var shipped = FlowMap.Load(Path.Combine(folder.Directory, "flow", FlowMap.FileName));
        var saes = SaeSet.Load(Path.Combine(folder.Directory, "saes"), folder.Manifest.Architecture);
        using var matcher = new CosineMatcher(Cpu);
        Assert.True(shipped.HasChanceLevel, "rerun `featureflow flow build`");
        var fresh = FlowMap.Build(saes, folder.Manifest.Architecture.Layers, matcher, chance: shipped.ChanceOptions);
        for (var l = 0; l < shipped.Layers; l++)
            foreach (var kind in Enum.GetValues<PredecessorKind>().Where(k => l > 0 || k != PredecessorKind.Resid))
            {
                var (a, b) = (shipped.Null(l, kind)!, fresh.Null(l, kind)!);
                Assert.Equal(b.Threshold, a.Threshold, 1e-5);
                Assert.Equal(b.Mean, a.Mean, 1e-5);
            }
    }
}
