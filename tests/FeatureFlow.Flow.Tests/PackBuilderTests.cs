using FeatureFlow.Engine;
using FeatureFlow.Models;
using FeatureFlow.Models.Folder;
using FeatureFlow.Sae;
using FeatureFlow.Steering;
using FeatureFlow.Steering.Packs;

namespace FeatureFlow.Flow.Tests;

public class PackBuilderTests
{
    private static readonly ModelManifest Manifest = ModelFolder.Open(RepoPaths.Stories260kModel).Manifest;

    /// <summary>Five layers of 64-wide SAEs whose residual feature 0 is one slowly turning direction (a chain over all layers).</summary>
    private static (FlowMap Map, SaeSet Saes) Chain()
    {
        var saes = FlowMapTests.RandomSaes(5, 64, 16, 21, SaeActivation.JumpRelu);
        for (var l = 0; l < 5; l++)
        {
            var row = saes.BySite[new Site(l, SiteKind.ResidPost)].Decoder.AsSpan(0, 64);
            row.Clear();
            row[0] = 10;
            row[1] = l;
            foreach (var sae in saes.BySite.Values) sae.Threshold.AsSpan().Fill(0.5f);
        }
        return (FlowMap.Build(saes, 5, new CosineMatcher(new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu })), saes);
    }

    private static FlowGraph Graph(FlowMap map) => FlowGraph.Build(map, FeatureId.Parse("2/res/0"), new FlowGraphOptions { ModuleThreshold = 1.01f });

    [Theory]
    [InlineData(PackMode.Cumulative, 3, new[] { 0, 1, 2, 3 })]
    [InlineData(PackMode.SingleLayer, 3, new[] { 3 })]
    [InlineData(PackMode.Baseline, 3, new[] { 2 })]
    public void Modes_pick_the_graph_layers(PackMode mode, int layer, int[] layers)
    {
        var (map, saes) = Chain();
        var graph = Graph(map);
        Assert.Equal((0, 4), (graph.LStart, graph.LEnd));
        var pack = PackBuilder.Build(graph, [], saes, Manifest, new PackBuildOptions { Name = "p", Mode = mode, Layer = layer, Value = 2f });
        Assert.Equal(layers, pack.Terms.Select(t => t.Site.Layer));
        Assert.All(pack.Terms, t => Assert.Equal(SteeringOperation.Add, t.Operation));
        Assert.Equal(mode.ToString() switch { "SingleLayer" => "single-layer", var m => m.ToLowerInvariant() }, pack.Metadata.Mode);
    }

    [Fact]
    public void Schedules_spread_the_coefficient_over_layers()
    {
        var (map, saes) = Chain();
        var graph = Graph(map);
        PackBuildOptions Options(PackSchedule s) => new() { Name = "p", Schedule = s, Value = 4f, LinearEnd = 1f, ExponentialAlpha = -0.5f };
        Assert.All(PackBuilder.Build(graph, [], saes, Manifest, Options(PackSchedule.Constant)).Terms, t => Assert.Equal(4f, t.Value));
        Assert.Equal([4f, 3.25f, 2.5f, 1.75f, 1f], PackBuilder.Build(graph, [], saes, Manifest, Options(PackSchedule.Linear)).Terms.Select(t => t.Value));
        var exponential = PackBuilder.Build(graph, [], saes, Manifest, Options(PackSchedule.Exponential)).Terms.Select(t => t.Value).ToArray();
        for (var l = 0; l < 5; l++) Assert.Equal(4f * MathF.Exp(-0.5f * l), exponential[l], 5);
    }

    [Fact]
    public void Threshold_units_scale_promotion_and_clamp_but_not_rescale()
    {
        var (map, saes) = Chain();
        var graph = Graph(map);
        var promote = PackBuilder.Build(graph, [], saes, Manifest, new PackBuildOptions { Name = "p", Value = 4f, ThresholdUnits = true });
        Assert.All(promote.Terms, t => Assert.Equal(2f, t.Value));
        Assert.Equal("threshold", promote.Metadata.Units);
        var rescale = PackBuilder.Build(graph, [], saes, Manifest, new PackBuildOptions { Name = "p", Value = -2f, Operation = PackOperation.Rescale, ThresholdUnits = true });
        Assert.All(rescale.Terms, t => Assert.Equal(-2f, t.Value));
        Assert.All(rescale.Terms, t => Assert.NotNull(t.Feature.Encoder));
        Assert.Equal("raw", rescale.Metadata.Units);
    }

    [Fact]
    public void Explicit_features_and_provenance_are_recorded()
    {
        var (_, saes) = Chain();
        var pack = PackBuilder.Build(null, [FeatureId.Parse("1/mlp/3"), FeatureId.Parse("4/res/0")], saes, Manifest,
            new PackBuildOptions { Name = "p", Operation = PackOperation.Clamp, Value = 3f, ThemeWords = ["cat"] });
        Assert.Equal([new Site(1, SiteKind.MlpOut), new Site(4, SiteKind.ResidPost)], pack.Terms.Select(t => t.Site));
        Assert.Equal(["blocks.1.hook_mlp_out/3", "blocks.4.hook_resid_post/0"], pack.Metadata.Sources.Select(s => s.Feature));
        Assert.Equal(SteeringPack.Fingerprint(Manifest), pack.Metadata.ModelFingerprint);
        Assert.Equal(["cat"], pack.Metadata.ThemeWords);
    }
}
