using FeatureFlow.Engine;
using FeatureFlow.Flow;
using FeatureFlow.Models;
using FeatureFlow.Models.Folder;
using FeatureFlow.Sae;
using FeatureFlow.Steering;

namespace FeatureFlow.Evaluation.Tests;

/// <summary>The shipped model, its SAEs and flow map, loaded once for the match validation tests.</summary>
public sealed class MatchValidationFixture : IDisposable
{
    public MatchValidationFixture()
    {
        Folder = ModelFolder.Open(RepoPaths.Stories260kModel);
        Decoder = new HookedDecoder(Folder.HookedGraphPath, Folder.Manifest.Architecture,
            new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu });
        Saes = LoadSaes();
        Map = FlowMap.Load(Path.Combine(Folder.Directory, "flow", FlowMap.FileName));
        Bos = Folder.LoadTokenizer().BosId;
    }

    public ModelFolder Folder { get; }
    public HookedDecoder Decoder { get; }
    public SaeSet Saes { get; }
    public FlowMap Map { get; }
    public int Bos { get; }
    public ModelArchitecture Architecture => Folder.Manifest.Architecture;

    /// <summary>A fresh copy of the shipped SAEs, for a test that edits one.</summary>
    public SaeSet LoadSaes() => SaeSet.Load(Path.Combine(Folder.Directory, "saes"), Folder.Manifest.Architecture);

    public void Dispose() => Decoder.Dispose();
}

public sealed class MatchValidationTests(MatchValidationFixture f) : IClassFixture<MatchValidationFixture>
{
    private static readonly MatchValidationOptions Story = new() { Sequences = 1, Tokens = 12, Seed = 5 };
    private const int Position = 9;

    [Theory]
    [InlineData(Deactivation.Remove)]
    [InlineData(Deactivation.Zero)]
    public void Deactivating_on_one_token_leaves_earlier_positions_alone_and_moves_the_site_by_exactly_the_term(
        Deactivation mode)
    {
        var options = Story with { Deactivation = mode };
        var story = MatchValidator.GenerateStories(f.Decoder, f.Bos, options)[0];
        var validator = new MatchValidator(f.Decoder, f.Saes, f.Map, options);
        int d = f.Architecture.DModel, vocab = f.Architecture.VocabSize;
        var sites = Site.All(f.Architecture.Layers).ToArray();
        var site = new Site(1, SiteKind.MlpOut);

        // The unsteered reference: the story up to the token in one call.
        using var state = f.Decoder.NewState();
        using var identity = f.Decoder.Bind(new SteeringTensors(f.Decoder.SteeringShape!));
        var reference = f.Decoder.Run(state, story.AsSpan(0, Position + 1), identity, sites);
        var h = reference.Sites[site.Index].AsSpan(Position * d, d).ToArray();
        var a = validator.Activations(site, h);
        var feature = Array.IndexOf(a, a.Max());
        Assert.True(a[feature] > 0);

        // Row 0 deactivates the feature, row 1 runs unsteered: each row sees only its own steering.
        var run = validator.RunAtToken(story, Position,
            [validator.Deactivate([new FeatureId(site, feature)]), validator.Deactivate([])], sites, sites);
        int prefixLogits = Position * vocab, prefixSites = Position * d;
        for (var row = 0; row < 2; row++)
        {
            AssertClose(reference.Logits.AsSpan(0, prefixLogits),
                run.Prefix.Logits.AsSpan(row * prefixLogits, prefixLogits));
            foreach (var s in sites)
                AssertClose(reference.Sites[s.Index].AsSpan(0, prefixSites),
                    run.Prefix.Sites[s.Index].AsSpan(row * prefixSites, prefixSites));
        }
        foreach (var s in sites)
        {
            var unsteeredSite = reference.Sites[s.Index].AsSpan(Position * d, d);
            AssertClose(unsteeredSite, run.Token.Sites[s.Index].AsSpan(d, d));
            if (s.Index < site.Index) AssertClose(unsteeredSite, run.Token.Sites[s.Index].AsSpan(0, d));
        }

        // On the token the site moves along v by a(h) (Remove) or a(h)/(e·v) (Zero), nothing else.
        var (v, e, _, theta) = f.Saes.Get(site, "test").HookFeature(feature);
        var ev = Dot(e, v);
        var step = mode == Deactivation.Remove ? a[feature] : a[feature] / ev;
        AssertClose(h.Select((x, i) => (float)(x - step * v[i])).ToArray(), run.Token.Sites[site.Index].AsSpan(0, d));
        var after = validator.Activations(site, run.Token.Sites[site.Index].AsSpan(0, d))[feature];
        if (mode == Deactivation.Zero) Assert.InRange(after, 0f, 1e-4f);
        else
        {
            // Removing the decoder contribution leaves the encoder reading (1 − e·v) of the feature.
            var left = a[feature] * (1 - ev);
            Assert.Equal(left > theta ? left : 0.0, after, 1e-4);
        }
        var logits = run.Token.Logits.AsSpan(0, vocab).ToArray();
        var unsteered = reference.Logits.AsSpan(Position * vocab, vocab).ToArray();
        Assert.True(logits.Zip(unsteered, (x, y) => Math.Abs(x - y)).Max() > 1e-3, "the deactivation changed nothing");
    }

    [Fact]
    public void A_tiny_run_has_every_row_bounds_top1_and_random_by_the_exhaustive_search_and_is_deterministic()
    {
        var options = new MatchValidationOptions
        {
            Sequences = 3, Tokens = 12, SamplesPerLayer = 5, Seed = 7, Parallelism = 2,
        };
        var report = MatchValidator.Run(f.Decoder, f.Saes, f.Map, f.Bos, options);
        var layers = f.Architecture.Layers;

        var expected = Enum.GetValues<MatchSite>().SelectMany(site =>
            Enumerable.Range(site == MatchSite.Resid ? 1 : 0, site == MatchSite.Resid ? layers - 1 : layers)
                .Select(l => (site, (int?)l)).Append((site, null)));
        Assert.Equal(expected, report.Summary.Select(r => (r.Site, r.Layer)));
        foreach (var r in report.Summary)
        {
            Assert.Equal(r.Sampled, r.Top1.N + r.MatchInactive);
            Assert.Equal(r.Top1.N, r.Random.N);
            Assert.Equal(r.Top1.N, r.Exhaustive.N);
            if (r.Site == MatchSite.All || r.Top1.N == 0) continue;
            Assert.True(r.Exhaustive.Success >= r.Top1.Success && r.Exhaustive.Success >= r.Random.Success);
            Assert.True(r.Exhaustive.MeanChange >= r.Top1.MeanChange - 1e-9);
            Assert.True(r.Exhaustive.MeanChange >= r.Random.MeanChange - 1e-9);
        }
        // One target per layer on each sampled token (every token has active R(L) features), seen from every site.
        for (var l = 0; l < layers; l++)
            foreach (var site in Enum.GetValues<MatchSite>().Where(s => l > 0 || s != MatchSite.Resid))
                Assert.Equal(options.SamplesPerLayer, report.Samples.Count(s => s.Layer == l && s.Site == site));
        foreach (var s in report.Samples.Where(s => s.MatchActive))
        {
            Assert.True(s.Before > 0);
            if (s.Site == MatchSite.All) Assert.Equal(s.Top1!.Deactivated.Count, s.Random!.Deactivated.Count);
            else
            {
                Assert.Equal(s.Matches[0].Feature, s.Top1!.Deactivated.Single());
                Assert.True(s.Exhaustive!.After <= s.Top1.After && s.Exhaustive.After <= s.Random!.After);
            }
        }
        Assert.Contains(report.Samples, s => s.MatchActive);

        var again = MatchValidator.Run(f.Decoder, f.Saes, f.Map, f.Bos, options);
        Assert.Equal(report.SamplesCsv(), again.SamplesCsv());
        Assert.Equal(report.TableCsv(), again.TableCsv());
        var other = MatchValidator.Run(f.Decoder, f.Saes, f.Map, f.Bos, options with { Seed = 8 });
        Assert.NotEqual(report.SamplesCsv(), other.SamplesCsv());
    }

    /// <summary>
    /// A synthetic target at R(2) whose encoder reads exactly the decoder v_g of its top-1 M(2) match g, biased so
    /// that it fires at ratio·a_g on the token. R(2) = resid_mid + M(2), so deactivating g lowers the target's
    /// pre-activation by step·|v_g|², with step = a_g (Remove) or a_g/(e_g·v_g) (Zero).
    /// </summary>
    [Theory]
    [InlineData(Deactivation.Remove, 0.5f)]
    [InlineData(Deactivation.Remove, 2f)]
    [InlineData(Deactivation.Zero, 0.5f)]
    [InlineData(Deactivation.Zero, 2f)]
    public void A_target_built_to_read_its_mlp_match_drops_by_exactly_that_match(Deactivation mode, float ratio)
    {
        const int layer = 2;
        var options = Story with { Deactivation = mode };
        var story = MatchValidator.GenerateStories(f.Decoder, f.Bos, options)[0];
        var shipped = new MatchValidator(f.Decoder, f.Saes, f.Map, options);
        var d = f.Architecture.DModel;
        Site mlp = new(layer, SiteKind.MlpOut), resid = new(layer, SiteKind.ResidPost);
        var all = Site.All(f.Architecture.Layers).ToList();
        var sites = shipped.RunAtToken(story, Position, [shipped.Deactivate([])], all).Token.Sites;
        var a = shipped.Activations(mlp, sites[mlp.Index]);
        var (target, g) = Enumerable.Range(0, f.Map.ResidFeatures(layer))
            .Select(t => (Target: t, Match: f.Map.Explain(new FeatureId(resid, t)).Mlp.Feature.Index))
            .MaxBy(p => a[p.Match]);
        Assert.True(a[g] > 0);

        var saes = f.LoadSaes();
        var sae = saes.Get(resid, "test");
        var (vg, eg, _, _) = saes.Get(mlp, "test").HookFeature(g);
        vg.CopyTo(sae.Encoder.AsSpan(target * d, d));
        // The hook's bias is b_enc − e·b_dec: pick b_enc so that e·h + bias = ratio·a_g on this token.
        var foldedDecoderBias = sae.ApplyDecoderBiasToInput ? Dot(vg, sae.DecoderBias) : 0;
        sae.EncoderBias[target] = (float)(ratio * a[g] - Dot(vg, sites[resid.Index]) + foldedDecoderBias);
        sae.Threshold[target] = 0f;

        var synthetic = new MatchValidator(f.Decoder, saes, f.Map, options);
        var result = synthetic.Evaluate(0, story, Position, new Random(1),
            new Dictionary<int, int> { [layer] = target });
        var sample = result.Samples.Single(s => s.Site == MatchSite.Mlp);
        Assert.True(sample.MatchActive);
        Assert.Equal(new FeatureId(mlp, g), sample.Top1!.Deactivated.Single());
        Assert.Equal((double)ratio * a[g], sample.Before, 1e-4);
        var step = mode == Deactivation.Remove ? a[g] : a[g] / Dot(eg, vg);
        var expected = Math.Max(0, ratio * a[g] - step * Dot(vg, vg));
        Assert.Equal(expected, sample.Top1.After, 1e-4);
        Assert.True(sample.Exhaustive!.After <= sample.Top1.After);
        if (expected == 0) Assert.Equal(0f, sample.Exhaustive.After);
    }

    [Fact]
    public async Task Eval_matches_prints_the_table_and_writes_the_csv_files_and_report()
    {
        var dir = Directory.CreateTempSubdirectory("featureflow-matches-").FullName;
        try
        {
            var output = new StringWriter();
            var error = new StringWriter();
            var exit = await Cli.CliApp.Build(output, error).Parse(["eval", "matches", "--model",
                RepoPaths.Stories260kModel, "--sequences", "2", "--tokens", "8", "--samples-per-layer", "3",
                "--seed", "4", "--out", dir]).InvokeAsync();
            Assert.True(exit == 0, error.ToString());
            Assert.Contains("| site | layer | sampled | match off | n | top-1 success |", output.ToString());
            Assert.Contains("| all three | **all** | 15 |", output.ToString());
            Assert.Contains("wall time", output.ToString());
            // Header, R at layers 1-4 and pooled, then M, A and all three at layers 0-4 and pooled.
            Assert.Equal(1 + 5 + 3 * 6, File.ReadAllLines(Path.Combine(dir, MatchValidationReport.TableFile)).Length);
            // Header, then 3 tokens × (4 sites at layers 1-4 and 3 at layer 0).
            Assert.Equal(1 + 3 * 19, File.ReadAllLines(Path.Combine(dir, MatchValidationReport.SamplesFile)).Length);
            Assert.Contains("RESCALE r = 0", File.ReadAllText(Path.Combine(dir, MatchValidationReport.MarkdownFile)));

            exit = await Cli.CliApp.Build(output, error).Parse(["eval", "matches", "--model",
                RepoPaths.Stories260kModel, "--sequences", "2", "--tokens", "8", "--samples-per-layer", "15"])
                .InvokeAsync();
            Assert.Equal(1, exit);
            Assert.Contains("samples per layer must be in 1..14", error.ToString());
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    private static double Dot(ReadOnlySpan<float> x, ReadOnlySpan<float> y)
    {
        var sum = 0.0;
        for (var i = 0; i < x.Length; i++) sum += (double)x[i] * y[i];
        return sum;
    }

    /// <summary>Equal up to float round-off of the same arithmetic done in differently shaped calls.</summary>
    private static void AssertClose(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (var i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(expected[i] - actual[i]) <= 1e-5 * (1 + Math.Abs(expected[i])),
                $"[{i}]: expected {expected[i]}, got {actual[i]}");
    }
}
