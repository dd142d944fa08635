using FeatureFlow.Engine;
using FeatureFlow.Models;
using FeatureFlow.Sae;

namespace FeatureFlow.Flow.Tests;

public class FlowGraphTests
{
    /// <summary>
    /// Four layers whose residual feature 0 is one direction drifting slowly (a chain), except layer 3,
    /// where it turns away (the chain must be cut there); MLP feature 0 of layer 1 is close to it.
    /// </summary>
    private static FlowMap ChainMap()
    {
        const int layers = 4, d = 8, features = 6;
        var saes = FlowMapTests.RandomSaes(layers, d, features, 11);
        float[] Direction(params float[] v) => v;
        void Set(Site site, int feature, float[] v) => v.CopyTo(saes.BySite[site].Decoder, feature * d);
        var chain = Direction(10, 1, 0, 0, 0, 0, 0, 0);
        for (var l = 0; l < 3; l++) Set(new Site(l, SiteKind.ResidPost), 0, Direction(10, 1 + l, 0, 0, 0, 0, 0, 0));
        Set(new Site(3, SiteKind.ResidPost), 0, Direction(0, 0, 0, 0, 0, 0, 10, 0));
        for (var l = 0; l < 4; l++) // every other residual feature points far from the chain
            for (var f = 1; f < features; f++) Set(new Site(l, SiteKind.ResidPost), f, Direction(-5, 0, f, l, 1, 0, 0, 3));
        Set(new Site(1, SiteKind.MlpOut), 0, chain);
        return FlowMap.Build(saes, layers, new CosineMatcher(new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu }));
    }

    [Fact]
    public void Graph_follows_the_chain_both_ways_and_cuts_it_where_the_residual_cosine_falls()
    {
        var map = ChainMap();
        var graph = FlowGraph.Build(map, FeatureId.Parse("1/res/0"), new FlowGraphOptions());
        Assert.Equal([0, 1, 2], graph.ResidualChain.Select(n => n.Feature.Site.Layer));
        Assert.All(graph.ResidualChain, n => Assert.Equal(0, n.Feature.Index));
        Assert.Equal((0, 2), (graph.LStart, graph.LEnd));
        Assert.Contains(graph.Nodes, n => n.Role == "mlp" && n.Feature == FeatureId.Parse("1/mlp/0") && n.Score > 0.99f);
        // By default each module node passes its own layer's chance level.
        foreach (var n in graph.Nodes.Where(n => n.Role is "mlp" or "attn"))
        {
            var kind = n.Role == "mlp" ? PredecessorKind.Mlp : PredecessorKind.Attn;
            Assert.True(n.Score >= map.Null(n.Feature.Site.Layer, kind)!.Threshold);
        }
        Assert.StartsWith("chance level", graph.ModuleThresholdSource);
        Assert.StartsWith("chance level", (string?)graph.ToJson()["residual_cut"]);
    }

    [Fact]
    public void A_higher_module_threshold_drops_module_nodes_and_a_lower_cut_extends_the_chain()
    {
        var map = ChainMap();
        var strict = FlowGraph.Build(map, FeatureId.Parse("1/res/0"), new FlowGraphOptions { ModuleThreshold = 1.01f });
        Assert.DoesNotContain(strict.Nodes, n => n.Role is "mlp" or "attn");
        var loose = FlowGraph.Build(map, FeatureId.Parse("1/res/0"), new FlowGraphOptions { ResidualCut = -1f, ModuleThreshold = 1.01f });
        Assert.Equal(3, loose.LEnd);
    }

    [Fact]
    public void Renderings_name_every_node()
    {
        var graph = FlowGraph.Build(ChainMap(), FeatureId.Parse("blocks.1.hook_resid_post/0"), new FlowGraphOptions());
        var svg = graph.ToSvg();
        var dot = graph.ToDot();
        var json = graph.ToJson();
        foreach (var n in graph.Nodes)
        {
            Assert.Contains(n.Feature.Short, svg);
            Assert.Contains($"\"{n.Feature.Short}\"", dot);
        }
        Assert.StartsWith("<svg", svg);
        Assert.Equal(graph.Nodes.Count, json["nodes"]!.AsArray().Count);
        Assert.Equal("blocks.1.hook_resid_post/0", (string?)json["seed"]);
    }

    [Fact]
    public void Module_features_are_not_seeds()
    {
        var e = Assert.Throws<ArgumentException>(() => FlowGraph.Build(ChainMap(), FeatureId.Parse("1/mlp/0"), new FlowGraphOptions()));
        Assert.Contains("residual", e.Message);
    }
}
