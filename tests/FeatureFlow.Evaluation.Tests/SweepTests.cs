using FeatureFlow.Engine;
using FeatureFlow.Evaluation;
using FeatureFlow.Flow;
using FeatureFlow.Models.Folder;
using FeatureFlow.Models.Llama2c;
using FeatureFlow.Sae;

namespace FeatureFlow.Evaluation.Tests;

/// <summary>The shipped model, its SAEs and flow map, loaded once for the sweep tests.</summary>
public sealed class ModelFixture : IDisposable
{
    public ModelFixture()
    {
        Folder = ModelFolder.Open(RepoPaths.Stories260kModel);
        Engine = new GenerationEngine(Folder, new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu });
        Saes = SaeSet.Load(Path.Combine(Folder.Directory, "saes"), Folder.Manifest.Architecture);
        Map = FlowMap.Load(Path.Combine(Folder.Directory, "flow", FlowMap.FileName));
    }

    public ModelFolder Folder { get; }
    public GenerationEngine Engine { get; }
    public SaeSet Saes { get; }
    public FlowMap Map { get; }

    /// <summary>The "happy" slot feature of docs/steering-experiments.md; its graph spans layers 2..4 here.</summary>
    public static readonly FeatureId Seed = FeatureId.Parse("3/res/145");

    public FlowGraph Graph() =>
        FlowGraph.Build(Map, Seed, new FlowGraphOptions { ResidualCut = 0.5f, ModuleThreshold = 0.5f });

    public void Dispose() => Engine.Dispose();
}

public sealed class SweepTests(ModelFixture f) : IClassFixture<ModelFixture>, IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("featureflow-sweep-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    /// <summary>2 modes × 2 strengths × 2 seeds × 8 tokens on one prompt, plus the unsteered arm: 10 rows.</summary>
    private SweepPlan TinyPlan(int tokens = 8) => SweepPlan.ForFeature(f.Graph(), f.Saes, f.Folder.Manifest,
        new FeatureRecipe { ThemeWords = ["happy", "glad"] },
        new SweepOptions
        {
            Modes = [SweepMode.Single, SweepMode.Baseline],
            Layers = [3],
            Strengths = [0f, 1f],
            Seeds = 2,
            Tokens = tokens,
            Prompts = ["Once upon a time,"],
        });

    private sealed class CountingJudge : ISteeringJudge
    {
        public int Calls;

        public Task<JudgeRating> RateAsync(string prompt, string continuation, CancellationToken cancellationToken)
        {
            Interlocked.Increment(ref Calls);
            return Task.FromResult(new JudgeRating(4, 5));
        }
    }

    [Fact]
    public void Perplexity_equals_a_double_precision_recomputation_with_the_reference_forward_pass()
    {
        var prompt = f.Engine.EncodePrompt("Once upon a time");
        var generated = f.Engine.Tokenizer.Encode(" there was a happy little girl", addBos: false);
        using var scorer = new GenerationScorer(f.Engine, f.Saes.Get(ModelFixture.Seed.Site, "seed"),
            ModelFixture.Seed.Index);
        var score = scorer.Score(prompt, generated, " there was a happy little girl", ["happy"]);

        var model = new ReferenceTransformer(Llama2cCheckpoint.Read(
            Path.Combine(f.Folder.Directory, f.Folder.Manifest.Provenance.Checkpoint.File)));
        int[] sequence = [.. prompt, .. generated];
        double nll = 0;
        for (var p = 0; p < sequence.Length - 1; p++)
        {
            var logits = model.Forward(sequence[p], p);
            if (p < prompt.Length - 1) continue;
            var max = logits.Max();
            var logSum = Math.Log(logits.Sum(v => Math.Exp(v - (double)max))) + max;
            nll -= logits[sequence[p + 1]] - logSum;
        }
        var expected = Math.Exp(nll / generated.Length);
        Assert.True(Math.Abs(score.Perplexity - expected) <= 1e-4 * expected,
            $"{score.Perplexity} vs reference {expected}");
        Assert.Equal(generated.Length, score.Tokens);
        Assert.Equal(1 / 6.0, score.ThemeRate, 12);
    }

    [Fact]
    public async Task Activation_equals_an_offline_encoding_of_the_batched_graphs_unsteered_site_readout()
    {
        // The batched graph streams, with each token, the site value at the position that produced it; so token k+1's
        // read-out is the value at token k's own position, which is where the scorer reads token k.
        var prompt = f.Engine.EncodePrompt("Once upon a time,");
        var ids = new List<int>();
        var readout = new List<float[]>();
        await foreach (var u in f.Engine.GenerateAsync(new GenerationRequest
        {
            PromptIds = prompt,
            MaxTokens = 13,
            Sampling = new SamplingOptions { Temperature = 0 },
            Readout = [ModelFixture.Seed.Site],
        }))
        {
            ids.AddRange(u.TokenIds);
            readout.AddRange(u.SiteValues);
        }
        Assert.Equal(13, ids.Count);
        var generated = ids.Take(12).ToArray();
        var sae = f.Saes.Get(ModelFixture.Seed.Site, "seed");
        using var scorer = new GenerationScorer(f.Engine, sae, ModelFixture.Seed.Index);
        var score = scorer.Score(prompt, generated, "", []);

        var z = new float[sae.DSae];
        var scratch = new float[sae.DIn];
        var values = readout.Skip(1).Take(12).Select(v =>
        {
            sae.Encode(v, z, scratch);
            return (double)z[ModelFixture.Seed.Index];
        }).ToArray();
        Assert.Equal(values.Average(), score.Activation, 4);
        Assert.Equal(values.Count(v => v > 0) / 12.0, score.ActiveShare, 12);
    }

    [Fact]
    public async Task A_tiny_grid_has_one_row_per_generation_and_strength_0_is_the_unsteered_row()
    {
        var plan = TinyPlan();
        var judge = new CountingJudge();
        var result = await SweepRunner.RunAsync(f.Engine, f.Saes, plan, _dir, judge);

        Assert.Equal(10, result.Rows.Count);
        Assert.Equal(10, result.Generated);
        Assert.Equal(0, result.Skipped);
        Assert.Equal(10, judge.Calls);
        Assert.Equal(10, result.Rows.Select(r => r.Key).Distinct().Count());
        string[] cells = ["unsteered||", "single|3|constant", "baseline|3|constant"];
        Assert.Equal(cells, result.Rows.Select(r => $"{r.Mode}|{r.Layer}|{r.Schedule}").Distinct());
        Assert.All(result.Rows, r => Assert.InRange(r.Tokens, 1, 8));
        Assert.All(result.Rows, r => Assert.Equal(0.8, r.JudgeScore, 12));
        Assert.All(result.Rows, r => Assert.Equal(r.Behaviour * r.Coherence, r.Combined, 12));

        foreach (var row in result.Rows.Where(r => r.Strength == 0 && r.Mode != SweepArm.Unsteered))
        {
            var unsteered = result.Rows.Single(r => r.Mode == SweepArm.Unsteered && r.Seed == row.Seed);
            Assert.Equal(unsteered.TokenIds, row.TokenIds);
            Assert.Equal(unsteered.Text, row.Text);
            Assert.Equal(unsteered.Activation, row.Activation);
            Assert.Equal(unsteered.Perplexity, row.Perplexity);
            Assert.Equal(unsteered.Combined, row.Combined);
        }
        // Steering at strength 1 changes some generation (s = 4 on the seed's graph nodes).
        Assert.Contains(result.Rows, r => r.Strength == 1 && !r.TokenIds.SequenceEqual(
            result.Rows.Single(u => u.Mode == SweepArm.Unsteered && u.Seed == r.Seed).TokenIds));

        var records = Csv.Parse(File.ReadAllText(Path.Combine(_dir, SweepRunner.RowsFile)), out var truncated);
        Assert.False(truncated);
        Assert.Equal(11, records.Count);
        Assert.Equal(SweepRow.Columns, records[0]);
    }

    [Fact]
    public async Task A_resumed_sweep_runs_only_the_missing_rows_and_drops_a_cut_off_line()
    {
        var plan = TinyPlan();
        var first = await SweepRunner.RunAsync(f.Engine, f.Saes, plan, _dir);

        var judge = new CountingJudge();
        var again = await SweepRunner.RunAsync(f.Engine, f.Saes, plan, _dir, judge);
        Assert.Equal(0, again.Generated);
        Assert.Equal(10, again.Skipped);
        Assert.Equal(0, judge.Calls);
        Assert.Equal(first.Rows.Select(r => r.ToCsv()), again.Rows.Select(r => r.ToCsv()));

        // Keep the header and 7 rows (the unsteered ones among them), then part of a row as a killed run leaves it.
        var path = Path.Combine(_dir, SweepRunner.RowsFile);
        var records = Csv.Parse(File.ReadAllText(path), out _);
        var kept = records.Take(8).Select(r => string.Join(",", r.Select(Csv.Escape)) + "\n");
        File.WriteAllText(path, string.Concat(kept) + string.Join(",", records[9].Select(Csv.Escape))[..15]);
        var resumed = await SweepRunner.RunAsync(f.Engine, f.Saes, plan, _dir);
        Assert.Equal(3, resumed.Generated);
        Assert.Equal(7, resumed.Skipped);
        Assert.Equal(first.Rows.Select(r => r.ToCsv()).Order(), resumed.Rows.Select(r => r.ToCsv()).Order());
        Assert.Equal(11, Csv.Parse(File.ReadAllText(path), out var truncated).Count);
        Assert.False(truncated);
    }

    [Fact]
    public async Task A_folder_holding_a_sweep_with_other_settings_is_refused()
    {
        await SweepRunner.RunAsync(f.Engine, f.Saes, TinyPlan(), _dir);
        var e = await Assert.ThrowsAsync<InvalidOperationException>(
            () => SweepRunner.RunAsync(f.Engine, f.Saes, TinyPlan(tokens: 6), _dir));
        Assert.Contains("tokens: 8 → 6", e.Message);
    }

    [Fact]
    public void A_feature_plan_has_one_family_per_mode_layer_and_schedule()
    {
        var graph = f.Graph();
        var plan = SweepPlan.ForFeature(graph, f.Saes, f.Folder.Manifest,
            new FeatureRecipe { Operation = PackOperation.Rescale },
            new SweepOptions { Strengths = [0.5f, 1f], Schedules = [PackSchedule.Constant, PackSchedule.Exponential] });
        var span = graph.LEnd - graph.LStart + 1;
        Assert.Equal((2 * span + 1) * 2, plan.Families.Count);
        Assert.Equal(1 + plan.Families.Count * 2, plan.Arms.Count);
        Assert.Equal(SteeringGoal.Suppress, plan.Goal);
        Assert.Equal(BehaviourMeasure.FeatureActivity, plan.Behaviour);
        // Cumulative at l_end steers every residual node of the graph; single at l only layer l's nodes.
        var cumulative =
            plan.Families.Single(x => x.Mode == "cumulative" && x.Layer == graph.LEnd && x.Schedule == "constant");
        Assert.Equal(graph.Nodes.Count, cumulative.Pack.Terms.Count);
        Assert.All(plan.Families.Where(x => x.Mode == "single"),
            x => Assert.All(x.Pack.Terms, t => Assert.Equal(x.Layer, t.Site.Layer)));
        Assert.Single(plan.Families.Where(x => x.Mode == "baseline" && x.Schedule == "constant").Single().Pack.Terms);
        Assert.Throws<ArgumentException>(() => SweepPlan.ForFeature(graph, f.Saes, f.Folder.Manifest,
            new FeatureRecipe(), new SweepOptions { Layers = [graph.LEnd + 1] }));
    }
}
