using FeatureFlow.Engine;
using FeatureFlow.Models;
using FeatureFlow.Models.Folder;
using FeatureFlow.Models.Formats;
using FeatureFlow.Sae;
using FeatureFlow.Sae.Training;
using FeatureFlow.Steering.Packs;

namespace FeatureFlow.Flow.Tests;

/// <summary>What models/stories260k ships for the feature-flow method, checked against fresh computations.</summary>
public sealed class ShippedArtifactsTests : IDisposable
{
    private static readonly ModelFolder Folder = ModelFolder.Open(RepoPaths.Stories260kModel);
    private static readonly EngineOptions Cpu = new() { ExecutionProvider = ExecutionProviderPreference.Cpu };
    private static readonly SaeSet Saes = SaeSet.Load(Path.Combine(Folder.Directory, "saes"), Folder.Manifest.Architecture);
    private readonly string _dir = Directory.CreateTempSubdirectory("featureflow-shipped-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    [Fact]
    public void Every_site_has_an_sae_that_reconstructs_fresh_activations_with_fvu_at_most_a_quarter()
    {
        Assert.Equal(15, Saes.BySite.Count);
        using var decoder = new HookedDecoder(Folder.HookedGraphPath, Folder.Manifest.Architecture, Cpu);
        // Stories the SAEs never saw: another seed than the training corpus.
        ActivationCollector.Collect(decoder, Folder.LoadTokenizer(), "stories260k",
            new CollectOptions { GeneratedSequences = 16, SequenceLength = 128, BatchRows = 16, Seed = 777_000 }, _dir);
        var corpus = ActivationCorpus.Open(_dir);
        foreach (var (site, sae) in Saes.BySite)
        {
            var report = TopKTrainer.Evaluate(sae, corpus.ReadSite(site));
            Assert.True(report.Fvu <= 0.25, $"{site}: FVU {report.Fvu:F3} on fresh stories");
            Assert.True(double.Parse(sae.Metadata["held_out_fvu"], System.Globalization.CultureInfo.InvariantCulture) <= 0.25, $"{site}: recorded held-out FVU");
            Assert.True(double.Parse(sae.Metadata["held_out_dead_share"], System.Globalization.CultureInfo.InvariantCulture) < 0.10, $"{site}: recorded dead share");
        }
    }

    [Fact]
    public void The_shipped_flow_map_is_what_flow_build_computes_from_the_shipped_saes()
    {
        var shipped = FlowMap.Load(Path.Combine(Folder.Directory, "flow", FlowMap.FileName));
        using var matcher = new CosineMatcher(Cpu);
        var fresh = FlowMap.Build(Saes, Folder.Manifest.Architecture.Layers, matcher);
        for (var l = 0; l < 5; l++)
            for (var f = 0; f < fresh.ResidFeatures(l); f++)
            {
                var id = new FeatureId(new Site(l, SiteKind.ResidPost), f);
                var (a, b) = (shipped.Explain(id), fresh.Explain(id));
                Assert.Equal(b.Resid?.Feature, a.Resid?.Feature);
                Assert.Equal(b.Mlp.Feature, a.Mlp.Feature);
                Assert.Equal(b.Attn.Feature, a.Attn.Feature);
            }
    }

    public static TheoryData<string> PromotionPacks() =>
        new(PackRegistry.Load(Path.Combine(Folder.Directory, "packs"), Folder.Manifest).Packs.Where(p => p.Metadata.Operation == "promote").Select(p => p.Name));

    [Fact]
    public void At_least_four_packs_ship_and_none_is_refused()
    {
        var registry = PackRegistry.Load(Path.Combine(Folder.Directory, "packs"), Folder.Manifest);
        Assert.Empty(registry.Errors);
        Assert.True(registry.Packs.Count >= 4, $"{registry.Packs.Count} packs ship");
        Assert.All(registry.Packs, p => Assert.True(File.Exists(Path.Combine(Folder.Directory, "packs", p.Name + ".svg")), $"{p.Name} has no flow-graph picture"));
    }

    [Theory]
    [MemberData(nameof(PromotionPacks))]
    public void A_promotion_pack_raises_its_seed_feature_and_its_theme_words(string name)
    {
        var pack = PackRegistry.Load(Path.Combine(Folder.Directory, "packs"), Folder.Manifest).Get(name, "pack");
        using var engine = new GenerationEngine(Folder, Cpu);
        var result = PackEvaluation.Evaluate(engine, pack, Saes, new PackEvaluationOptions { Seeds = 8, Tokens = 48 });
        Assert.True(result.Steered.FeatureActivation.Mean > result.Unsteered.FeatureActivation.Mean,
            $"{name}: seed-feature activation {result.Unsteered.FeatureActivation} → {result.Steered.FeatureActivation}");
        Assert.True(result.Steered.ThemeWordRate.Mean > result.Unsteered.ThemeWordRate.Mean,
            $"{name}: theme-word rate {result.Unsteered.ThemeWordRate} → {result.Steered.ThemeWordRate}");
    }

    public static TheoryData<string> SuppressionPacks() =>
        new(PackRegistry.Load(Path.Combine(Folder.Directory, "packs"), Folder.Manifest).Packs.Where(p => p.Metadata.Operation == "rescale").Select(p => p.Name));

    [Theory]
    [MemberData(nameof(SuppressionPacks))]
    public void A_suppression_pack_lowers_its_theme_words(string name)
    {
        var pack = PackRegistry.Load(Path.Combine(Folder.Directory, "packs"), Folder.Manifest).Get(name, "pack");
        using var engine = new GenerationEngine(Folder, Cpu);
        var result = PackEvaluation.Evaluate(engine, pack, Saes, new PackEvaluationOptions { Seeds = 8, Tokens = 48 });
        Assert.True(result.Steered.ThemeWordRate.Mean < result.Unsteered.ThemeWordRate.Mean,
            $"{name}: theme-word rate {result.Unsteered.ThemeWordRate} → {result.Steered.ThemeWordRate}");
    }

    /// <summary>The prompts of `featureflow eval sweep`, so of the sweeps that chose the packs' strengths.</summary>
    private static readonly string[] StoryPrompts =
        ["", "Once upon a time,", "One day, a little girl named Lily", "Tim and his dog went to the"];

    [Fact]
    public void Every_pack_on_three_or_more_blocks_moves_its_theme_at_its_default_strength_within_1_5x_perplexity()
    {
        var packs = PackRegistry.Load(Path.Combine(Folder.Directory, "packs"), Folder.Manifest).Packs
            .Where(p => p.Terms.Select(t => t.Site.Layer).Distinct().Count() >= 3).ToArray();
        Assert.True(packs.Length >= 2, $"{packs.Length} packs steer three or more blocks");
        using var engine = new GenerationEngine(Folder, Cpu);
        // Other seeds and lengths than the sweeps': 16 seeds × 48 tokens on BOS and the three story openings.
        var options = new PackEvaluationOptions { Seeds = 16, Tokens = 48, Prompts = StoryPrompts };
        foreach (var pack in packs)
        {
            var r = PackEvaluation.Evaluate(engine, pack, Saes, options);
            var (before, after) = (r.Unsteered.ThemeWordRate.Mean, r.Steered.ThemeWordRate.Mean);
            var suppress = pack.Metadata.Operation == "rescale";
            Assert.True(suppress ? after < before : after > before,
                $"{pack.Name} ({pack.Metadata.Operation}): theme-word rate {r.Unsteered.ThemeWordRate} → " +
                $"{r.Steered.ThemeWordRate}");
            Assert.True(r.Steered.Perplexity.Mean <= 1.5 * r.Unsteered.Perplexity.Mean,
                $"{pack.Name}: perplexity {r.Unsteered.Perplexity} → {r.Steered.Perplexity}");
        }
    }
}
