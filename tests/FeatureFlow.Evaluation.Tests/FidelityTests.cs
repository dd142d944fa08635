using System.Globalization;
using FeatureFlow.Engine;
using FeatureFlow.Flow;
using FeatureFlow.Models;
using FeatureFlow.Sae;

namespace FeatureFlow.Evaluation.Tests;

public class FidelityTests
{
    private static readonly Site At = new(1, SiteKind.MlpOut);

    /// <summary>Encoder and decoder are the identity and no bias applies, so pre = x and x̂ = z.</summary>
    private static SparseAutoencoder Identity(int d, int k, float[] thresholds)
    {
        var sae = new SparseAutoencoder(d, d, SaeActivation.TopK, At) { K = k, ApplyDecoderBiasToInput = false };
        for (var j = 0; j < d; j++) sae.Encoder[j * d + j] = sae.Decoder[j * d + j] = 1f;
        thresholds.CopyTo(sae.Threshold, 0);
        return sae;
    }

    [Fact]
    public void Counts_jaccard_masses_and_fvu_match_a_hand_computed_answer()
    {
        // Token 1: top-2 keeps {0: 3, 1: 2}; the hook fires {0: 3, 2: 1} (2 is not above 2.5; the 0 never fires).
        // Token 2: one positive value, which both keep.
        var sae = Identity(4, 2, [0.5f, 2.5f, 0.5f, 0.5f]);
        float[] x = [3, 2, 1, 0, /**/ 0, 0, 0, 1];
        var row = Fidelity.Measure("hand", sae, x);

        Assert.Equal((2L, 1.5, 1.5), (row.Tokens, row.TopKL0, row.HookL0));
        Assert.Equal((1.0 / 3 + 1.0) / 2, row.Jaccard, 12);
        Assert.Equal(2.0 / 6, row.MissedMass, 12);   // top-k mass 3 + 2 + 1, of which 2 on feature 1
        Assert.Equal(1.0 / 5, row.ExtraMass, 12);    // hook mass 3 + 1 + 1, of which 1 on feature 2
        // Σ‖x − x̄‖² = 2·(1.5² + 1² + 0.5² + 0.5²) = 7.5; top-k misses 1 (feature 2), the hook 2 (feature 1).
        Assert.Equal(1.0 / 7.5, row.TopKFvu, 6);
        Assert.Equal(4.0 / 7.5, row.HookFvu, 6);
    }

    [Fact]
    public void A_silent_token_agrees_and_a_negative_threshold_acts_as_zero_as_in_the_hook()
    {
        var sae = Identity(3, 2, [-1f, -1f, -1f]);
        var row = Fidelity.Measure("silent", sae, [-0.5f, -2f, 0f, /**/ 1f, 2f, 3f]);
        // Token 1 has nothing positive: both sets are empty (Jaccard 1), though pre > θ for feature 0.
        // Token 2: top-2 keeps {1, 2}, the hook all three; feature 0 is extra mass 1 of 6.
        Assert.Equal((2.0 / 2, 3.0 / 2), (row.TopKL0, row.HookL0));
        Assert.Equal((1.0 + 2.0 / 3) / 2, row.Jaccard, 12);
        Assert.Equal((0.0, 1.0 / 6), (row.MissedMass, row.ExtraMass));
    }

    [Fact]
    public void Thresholds_that_reproduce_top_k_exactly_score_perfect_fidelity()
    {
        // Every token has exactly k values above θ and nothing else positive, so both pick the same features.
        var sae = Identity(3, 2, [1f, 1f, 1f]);
        var row = Fidelity.Measure("exact", sae, [5f, -0.2f, 4f, /**/ -0.1f, 6f, 2f, /**/ 2f, 3f, -0.5f]);
        Assert.Equal((1.0, 0.0, 0.0), (row.Jaccard, row.MissedMass, row.ExtraMass));
        Assert.Equal(row.TopKFvu, row.HookFvu);
    }

    [Fact]
    public void Only_topk_saes_are_measured()
    {
        var jump = new SparseAutoencoder(2, 2, SaeActivation.JumpRelu, At);
        Assert.Throws<ArgumentException>(() => Fidelity.Measure("j", jump, [1f, 1f]));
    }

    [Fact]
    public void The_markdown_table_has_a_row_per_site_and_a_mean_per_set_and_the_csv_a_line_per_site()
    {
        var sae = Identity(4, 2, [0.5f, 2.5f, 0.5f, 0.5f]);
        float[] x = [3, 2, 1, 0, 0, 0, 0, 1];
        var rows = new[] { Fidelity.Measure("a", sae, x), Fidelity.Measure("b", sae, x) };
        var md = Fidelity.ToMarkdown(rows).Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(2 + 2 + 2, md.Length);
        Assert.Contains(md, l => l.StartsWith("| b | **mean of sites**", StringComparison.Ordinal)
                                 && l.Contains("| 0.667 |", StringComparison.Ordinal));
        var csv = Fidelity.ToCsv(rows).Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(3, csv.Length);
        Assert.StartsWith("a,blocks.1.hook_mlp_out,4,2,2,", csv[1], StringComparison.Ordinal);
    }

    /// <summary>
    /// Two layers of two features in d = 4 with exact axis directions: R0 = {e0, e1}, R1 = {e0, e2}, M0 = {e0, e3},
    /// and every other module e3. Only R0/0 → R1/0 is a residual match (cosine 1); only R0/0 has a module match (M0/0).
    /// </summary>
    private static FlowMap AxisMap()
    {
        static float[] E(int i) => [.. Enumerable.Range(0, 4).Select(c => c == i ? 1f : 0f)];
        var saes = new List<SparseAutoencoder>();
        void Add(Site site, int first, int second)
        {
            var sae = new SparseAutoencoder(4, 2, SaeActivation.TopK, site) { K = 1 };
            E(first).CopyTo(sae.Decoder, 0);
            E(second).CopyTo(sae.Decoder, 4);
            saes.Add(sae);
        }
        Add(new Site(0, SiteKind.ResidPost), 0, 1);
        Add(new Site(1, SiteKind.ResidPost), 0, 2);
        Add(new Site(0, SiteKind.MlpOut), 0, 3);
        Add(new Site(0, SiteKind.AttnOut), 3, 3);
        Add(new Site(1, SiteKind.MlpOut), 3, 3);
        Add(new Site(1, SiteKind.AttnOut), 3, 3);
        var cpu = new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu };
        using var matcher = new CosineMatcher(cpu);
        return FlowMap.Build(SaeSet.FromSaes(saes), 2, matcher);
    }

    [Fact]
    public void Chain_lengths_count_every_residual_seed_once_by_the_layers_its_chain_spans()
    {
        var options = new FlowGraphOptions { ResidualCut = 0.5f, ModuleThreshold = 0.5f };
        var chains = FidelityChains.Measure("axes", AxisMap(), options);
        // R0/0 and R1/0 each span both layers and hold M0/0; R0/1 and R1/1 stand alone.
        Assert.Equal([2L, 2L], chains.Counts);
        Assert.Equal((4L, 1.5, 0.5), (chains.Graphs, chains.MeanLength, chains.MeanModuleNodes));
        Assert.Contains("| axes | 0.5 | 0.5 | 4 | 50.0 % | 50.0 % | 1.50 | 0.50 |",
            FidelityChains.ToMarkdown([chains]));
        Assert.Equal(["map,cut,module_threshold,length,graphs", "axes,0.5,0.5,1,2", "axes,0.5,0.5,2,2"],
            FidelityChains.ToCsv([chains]).Split('\n', StringSplitOptions.RemoveEmptyEntries));
    }
}

/// <summary><c>featureflow sae calibrate | fidelity | chains</c> end to end, in-process, on a tiny corpus.</summary>
public sealed class FidelityCliTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("featureflow-fidelity-").FullName;
    private static readonly string Shipped = Path.Combine(RepoPaths.Stories260kModel, "saes");
    private const string Site = "blocks.2.hook_resid_post";

    public void Dispose() => Directory.Delete(_dir, true);

    private static async Task<(int Exit, string Out, string Err)> Run(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        var parsed = Cli.CliApp.Build(output, error).Parse([.. args, "--model", RepoPaths.Stories260kModel]);
        var exit = await parsed.InvokeAsync();
        return (exit, output.ToString(), error.ToString());
    }

    [Fact]
    public async Task Calibrate_writes_a_copy_that_fidelity_measures_next_to_the_original()
    {
        var corpus = Path.Combine(_dir, "corpus");
        var (exit, _, stderr) = await Run("collect", "--out", corpus, "--sequences", "16", "--length", "64",
            "--seed", "900000", "--provider", "Cpu");
        Assert.True(exit == 0, stderr);
        var thresholds = Path.Combine(Shipped, Site, "featureflow_thresholds.safetensors");
        var before = File.ReadAllBytes(thresholds);

        var copy = Path.Combine(_dir, "saes");
        (exit, var stdout, stderr) = await Run("sae", "calibrate", "--corpus", corpus, "--thresholds", "RateMatched",
            "--site", Site, "--out", copy);
        Assert.True(exit == 0, stderr);
        Assert.Contains($"{Site}: RateMatched thresholds from 1,024 tokens", stdout);
        Assert.Equal(before, File.ReadAllBytes(thresholds));   // the original is untouched
        Assert.Equal(15, Directory.GetDirectories(copy).Length);
        Assert.Equal(File.ReadAllBytes(Path.Combine(Shipped, Site, "sae_weights.safetensors")),
            File.ReadAllBytes(Path.Combine(copy, Site, "sae_weights.safetensors")));
        Assert.NotEqual(before, File.ReadAllBytes(Path.Combine(copy, Site, "featureflow_thresholds.safetensors")));
        const string other = "blocks.1.hook_mlp_out/featureflow_thresholds.safetensors";
        Assert.Equal(File.ReadAllBytes(Path.Combine(Shipped, other)), File.ReadAllBytes(Path.Combine(copy, other)));

        var report = Path.Combine(_dir, "fidelity");
        (exit, _, stderr) = await Run("sae", "fidelity", "--corpus", corpus, "--tokens", "0", "--saes", Shipped,
            "--saes", copy, "--out", report);
        Assert.True(exit == 0, stderr);
        var rows = File.ReadAllLines(Path.Combine(report, "fidelity.csv"));
        Assert.Equal(1 + 2 * 15, rows.Length);
        double HookL0(string saes) => double.Parse(
            rows.Single(r => r.StartsWith($"{saes},{Site},", StringComparison.Ordinal)).Split(',')[6],
            CultureInfo.InvariantCulture);
        // Rate-matched on these very tokens, the hook fires about k = 16 features; the shipped thresholds fire more.
        Assert.True(Math.Abs(HookL0(copy) - 16) < Math.Abs(HookL0(Shipped) - 16),
            $"{HookL0(copy)} vs {HookL0(Shipped)}");
        Assert.Contains("**mean of sites**", File.ReadAllText(Path.Combine(report, "fidelity.md")));
    }

    [Fact]
    public async Task Chains_counts_every_residual_feature_of_the_shipped_map_once()
    {
        var (exit, _, stderr) = await Run("sae", "chains", "--cut", "0.5", "--module-threshold", "0.5", "--out", _dir);
        Assert.True(exit == 0, stderr);
        var lines = File.ReadAllLines(Path.Combine(_dir, "chains.csv"));
        Assert.Equal(1 + 5, lines.Length);
        var graphs = lines.Skip(1).Sum(l => int.Parse(l.Split(',')[^1], CultureInfo.InvariantCulture));
        Assert.Equal(5 * 512, graphs);
    }

    [Fact]
    public async Task Fresh_tokens_come_in_whole_stories()
    {
        var (exit, _, stderr) = await Run("sae", "fidelity", "--tokens", "100", "--out", _dir);
        Assert.Equal(1, exit);
        Assert.Contains("stories of 128", stderr);
    }
}
