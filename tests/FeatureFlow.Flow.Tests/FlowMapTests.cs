using FeatureFlow.Engine;
using FeatureFlow.Models;
using FeatureFlow.Sae;

namespace FeatureFlow.Flow.Tests;

public class FlowMapTests
{
    private static readonly EngineOptions Cpu = new() { ExecutionProvider = ExecutionProviderPreference.Cpu };

    /// <summary>Top-1 cosine both ways in double precision, first index on ties; zero rows have cosine 0.</summary>
    private static (int[] BackIdx, double[] BackScore, int[] FwdIdx, double[] FwdScore) BruteForce(float[] targets, float[] sources, int d)
    {
        int m = targets.Length / d, n = sources.Length / d;
        double Norm(float[] a, int r) => Math.Sqrt(Enumerable.Range(0, d).Sum(i => (double)a[r * d + i] * a[r * d + i]));
        double Cos(int i, int j)
        {
            double na = Norm(targets, i), nb = Norm(sources, j);
            if (na == 0 || nb == 0) return 0;
            return Enumerable.Range(0, d).Sum(c => (double)targets[i * d + c] * sources[j * d + c]) / (na * nb);
        }
        var cos = new double[m, n];
        for (var i = 0; i < m; i++) for (var j = 0; j < n; j++) cos[i, j] = Cos(i, j);
        var bi = new int[m]; var bs = new double[m]; var fi = new int[n]; var fs = new double[n];
        for (var i = 0; i < m; i++) { bs[i] = double.NegativeInfinity; for (var j = 0; j < n; j++) if (cos[i, j] > bs[i]) { bs[i] = cos[i, j]; bi[i] = j; } }
        for (var j = 0; j < n; j++) { fs[j] = double.NegativeInfinity; for (var i = 0; i < m; i++) if (cos[i, j] > fs[j]) { fs[j] = cos[i, j]; fi[j] = i; } }
        return (bi, bs, fi, fs);
    }

    private static float[] RandomRows(Random rng, int rows, int d) => Numerics.RandomVector(rng, rows * d);

    [Fact]
    public void Matcher_equals_a_double_precision_brute_force_with_ties_dead_rows_and_several_blocks()
    {
        const int d = 24, m = 300, n = 257;
        var rng = new Random(5);
        var targets = RandomRows(rng, m, d);
        var sources = RandomRows(rng, n, d);
        Array.Copy(sources, 10 * d, sources, 200 * d, d);        // exact tie: source 200 duplicates source 10
        Array.Copy(sources, 10 * d, targets, 7 * d, d);          // target 7 points exactly at both
        Array.Clear(sources, 33 * d, d);                          // a dead source feature
        Array.Clear(targets, 42 * d, d);                          // a dead target feature
        using var matcher = new CosineMatcher(Cpu, blockRows: 64);
        var (back, forward) = matcher.Match(targets, sources, d);
        var expected = BruteForce(targets, sources, d);

        Assert.Equal(expected.BackIdx, back.Index);
        Assert.Equal(expected.FwdIdx, forward.Index);
        for (var i = 0; i < m; i++) Assert.Equal(expected.BackScore[i], back.Score[i], 1e-5);
        for (var j = 0; j < n; j++) Assert.Equal(expected.FwdScore[j], forward.Score[j], 1e-5);
        Assert.Equal(10, back.Index[7]);                          // the lower index wins the tie
        Assert.Equal(0f, back.Score[42]);
    }

    [Fact]
    public void Rescaling_a_decoder_row_changes_nothing()
    {
        const int d = 16;
        var rng = new Random(9);
        var targets = RandomRows(rng, 50, d);
        var sources = RandomRows(rng, 40, d);
        using var matcher = new CosineMatcher(Cpu, blockRows: 16);
        var before = matcher.Match(targets, sources, d);
        for (var c = 0; c < d; c++) { sources[3 * d + c] *= 7.5f; targets[11 * d + c] *= 0.01f; }
        var after = matcher.Match(targets, sources, d);
        Assert.Equal(before.Backward.Index, after.Backward.Index);
        Assert.Equal(before.Forward.Index, after.Forward.Index);
        for (var i = 0; i < 50; i++) Assert.Equal(before.Backward.Score[i], after.Backward.Score[i], 1e-5);
    }

    internal static SaeSet RandomSaes(int layers, int d, int features, int seed, SaeActivation activation = SaeActivation.Relu)
    {
        var rng = new Random(seed);
        return SaeSet.FromSaes(Site.All(layers).Select(site =>
        {
            var sae = new SparseAutoencoder(d, features, activation, site);
            RandomRows(rng, features, d).CopyTo(sae.Decoder, 0);
            return sae;
        }));
    }

    [Fact]
    public void Flow_map_holds_the_brute_force_matches_of_every_layer_and_survives_a_round_trip()
    {
        const int layers = 3, d = 12, features = 40;
        var saes = RandomSaes(layers, d, features, 3);
        using var matcher = new CosineMatcher(Cpu, blockRows: 16);
        var map = FlowMap.Build(saes, layers, matcher);
        var path = Path.GetTempFileName();
        map.Save(path);
        var loaded = FlowMap.Load(path);
        File.Delete(path);

        for (var l = 0; l < layers; l++)
        {
            var resid = saes.BySite[new Site(l, SiteKind.ResidPost)].Decoder;
            var mlp = BruteForce(resid, saes.BySite[new Site(l, SiteKind.MlpOut)].Decoder, d);
            var attn = BruteForce(resid, saes.BySite[new Site(l, SiteKind.AttnOut)].Decoder, d);
            var prev = l > 0 ? BruteForce(resid, saes.BySite[new Site(l - 1, SiteKind.ResidPost)].Decoder, d) : default;
            for (var f = 0; f < features; f++)
            {
                var p = loaded.Explain(new FeatureId(new Site(l, SiteKind.ResidPost), f));
                Assert.Equal(mlp.BackIdx[f], p.Mlp.Feature.Index);
                Assert.Equal(mlp.BackScore[f], p.Mlp.Score, 1e-5);
                Assert.Equal(attn.BackIdx[f], p.Attn.Feature.Index);
                Assert.Equal(new Site(l, SiteKind.AttnOut), p.Attn.Feature.Site);
                if (l == 0) Assert.Null(p.Resid);
                else
                {
                    Assert.Equal(prev.BackIdx[f], p.Resid!.Value.Feature.Index);
                    Assert.Equal(prev.BackScore[f], p.Resid.Value.Score, 1e-5);
                }
            }
            if (l > 0)
                for (var f = 0; f < features; f++)
                    Assert.Equal(prev.FwdIdx[f], loaded.ResidSuccessor(l - 1, f, backwardConsistent: false)!.Value.Index);
        }
    }

    [Theory]
    [InlineData(0.9f, 0.1f, 0.1f, FlowCategory.Translated)]
    [InlineData(0.9f, 0.6f, 0.1f, FlowCategory.ProcessedMlp)]
    [InlineData(0.9f, 0.1f, 0.3f, FlowCategory.ProcessedAttn)]
    [InlineData(0.5f, 0.3f, 0.7f, FlowCategory.ProcessedBoth)]
    [InlineData(0.2f, 0.7f, 0.1f, FlowCategory.NewbornMlp)]
    [InlineData(0.2f, 0.1f, 0.7f, FlowCategory.NewbornAttn)]
    [InlineData(0.49f, 0.4f, 0.7f, FlowCategory.NewbornBoth)]
    [InlineData(0.2f, 0.1f, 0.29f, FlowCategory.Unexplained)]
    public void Categories_follow_explicit_thresholds(float resid, float mlp, float attn, FlowCategory expected)
    {
        var map = FlowMap.Build(RandomSaes(2, 4, 3, 1), 2, new CosineMatcher(Cpu));
        var f = new FeatureId(new Site(1, SiteKind.ResidPost), 0);
        var p = new Predecessors(f, (f with { Site = new Site(0, SiteKind.ResidPost) }, resid), (f with { Site = new Site(1, SiteKind.MlpOut) }, mlp), (f with { Site = new Site(1, SiteKind.AttnOut) }, attn));
        Assert.Equal(expected, map.Category(p, new FlowThresholds(0.5f, 0.3f)));
    }

    [Theory]
    [InlineData("3/res/17", 3, SiteKind.ResidPost, 17)]
    [InlineData("0/mlp/5", 0, SiteKind.MlpOut, 5)]
    [InlineData("2/att/0", 2, SiteKind.AttnOut, 0)]
    [InlineData("blocks.3.hook_resid_post/17", 3, SiteKind.ResidPost, 17)]
    public void Feature_ids_parse_in_both_forms(string text, int layer, SiteKind kind, int index) =>
        Assert.Equal(new FeatureId(new Site(layer, kind), index), FeatureId.Parse(text));

    [Theory]
    [InlineData("3/xyz/1")]
    [InlineData("blocks.3.hook_resid_post")]
    [InlineData("blocks.3.hook_resid_post/-1")]
    public void Malformed_feature_ids_are_rejected(string text) => Assert.Throws<FormatException>(() => FeatureId.Parse(text));
}
