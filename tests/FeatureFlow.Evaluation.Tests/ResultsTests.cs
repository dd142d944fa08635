using System.Text.Json.Nodes;
using FeatureFlow.Cli;
using FeatureFlow.Evaluation;
using FeatureFlow.Steering.Packs;

namespace FeatureFlow.Evaluation.Tests;

/// <summary><c>featureflow eval results</c>: the ship rule, the verdicts, the spec parser and the document.</summary>
public sealed class ResultsTests(ModelFixture f) : IClassFixture<ModelFixture>, IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("featureflow-results-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    private static readonly string SpecPath = Path.Combine(RepoPaths.Root, "docs", "steering-results", "spec.json");

    private static ConfidenceInterval Ci(double mean, double halfWidth = 0.01) => new(mean, halfWidth, 128);

    /// <summary>A hand-built cell: the rule and the verdicts read behaviour, perplexity and combined.</summary>
    private static CellSummary Cell(string mode, int? layer, float strength, double behaviour, double perplexity,
        double combined, double halfWidth = 0.01)
    {
        var none = new ConfidenceInterval(double.NaN, double.NaN, 0);
        return new CellSummary(new CellKey(mode, layer, mode == SweepArm.Unsteered ? "" : "constant", strength), 128,
            Ci(64), none, none, Ci(behaviour), Ci(perplexity), Ci(behaviour), none, Ci(combined, halfWidth), none);
    }

    private static readonly CellSummary Unsteered = Cell(SweepArm.Unsteered, null, 0, 0.01, 2.0, 0.009);

    [Fact]
    public void The_rule_picks_the_best_combined_cell_within_the_perplexity_bound_and_above_unsteered_behaviour()
    {
        CellSummary[] cells =
        [
            Unsteered,
            Cell("cumulative", 4, 0.25f, 0.005, 2.1, 0.004), // behaviour below unsteered
            Cell("cumulative", 4, 0.5f, 0.02, 2.5, 0.015),
            Cell("cumulative", 4, 1f, 0.05, 2.9, 0.030),
            Cell("cumulative", 4, 2f, 0.30, 3.5, 0.050), // best combined, but perplexity > 1.5 × 2.0
            Cell("single", 4, 1f, 0.50, 2.0, 0.500), // another family
        ];
        var choice = ResultsVerdicts.ChooseStrength(cells, "cumulative", 4, 1.5);
        Assert.Equal(1f, choice.Chosen!.Cell.Strength);
        Assert.Equal([0.5f, 1f], choice.Qualifying.Select(c => c.Cell.Strength));
        Assert.Equal(3.0, choice.MaxPerplexity, 12);
        Assert.Equal(4, choice.Cells.Count);
    }

    [Fact]
    public void The_rule_refuses_when_no_cell_qualifies_and_says_why()
    {
        CellSummary[] cells =
        [
            Unsteered,
            Cell("cumulative", 4, 0.5f, 0.009, 2.5, 0.008),
            Cell("cumulative", 4, 1f, 0.05, 3.2, 0.030),
        ];
        var choice = ResultsVerdicts.ChooseStrength(cells, "cumulative", 4, 1.5);
        Assert.Null(choice.Chosen);
        Assert.Empty(choice.Qualifying);
        Assert.Contains("cumulative L4 constant", choice.Refusal);
        Assert.Contains("≤ 3", choice.Refusal);
    }

    [Fact]
    public void The_rule_breaks_ties_toward_the_smaller_strength()
    {
        CellSummary[] cells =
        [
            Unsteered,
            Cell("cumulative", 4, 2f, 0.05, 2.2, 0.030),
            Cell("cumulative", 4, 1f, 0.05, 2.1, 0.030),
            Cell("cumulative", 4, 3f, 0.06, 2.4, 0.020),
        ];
        Assert.Equal(1f, ResultsVerdicts.ChooseStrength(cells, "cumulative", 4, 1.5).Chosen!.Cell.Strength);
    }

    /// <summary>A graph over layers 2..4 with its seed at 3; strengths 0.1, 0.5, 1.</summary>
    private static CellSummary[] Sweep(double cumulativeSmall, double singleSmall, double flowBest, double baselineBest,
        int bestSingleLayer, double bestSingle, double atSeedLayer)
    {
        var cells = new List<CellSummary> { Unsteered };
        foreach (var k in new[] { 0.1f, 0.5f, 1f })
        {
            var small = k < 1;
            foreach (var l in new[] { 2, 3, 4 })
            {
                var single = k == 1
                    ? l == bestSingleLayer ? bestSingle : l == 3 ? atSeedLayer : 0.001
                    : small && l == 4 ? singleSmall : 0.001;
                cells.Add(Cell("single", l, k, 0.1, 2, single));
                var cumulative = l == 4 && small ? cumulativeSmall : l == 3 && k == 1 ? flowBest : 0.001;
                cells.Add(Cell("cumulative", l, k, 0.1, 2, cumulative));
            }
            cells.Add(Cell("baseline", 3, k, 0.1, 2, k == 1 ? baselineBest : 0.001));
        }
        return [.. cells];
    }

    private static ThemeVerdicts Judge(CellSummary[] cells, Func<CellKey, bool>? seedOnly = null) =>
        ResultsVerdicts.Judge(cells, 2, 4, 3, seedOnly ?? (_ => false), smallStrengths: 2);

    [Fact]
    public void Verdicts_hold_when_the_claimed_cell_is_clearly_better()
    {
        var v = Judge(Sweep(cumulativeSmall: 0.5, singleSmall: 0.2, flowBest: 0.9, baselineBest: 0.3,
            bestSingleLayer: 3, bestSingle: 0.6, atSeedLayer: 0.6));
        Assert.Equal(Verdict.Holds, v.CumulativeAtSmallStrength.Overall);
        Assert.Equal([0.1f, 0.5f], v.CumulativeAtSmallStrength.PerStrength.Select(c => c.Claimed.Cell.Strength));
        Assert.All(v.CumulativeAtSmallStrength.PerStrength, c => Assert.Equal(4, c.Claimed.Cell.Layer));
        Assert.Equal(Verdict.Holds, v.FlowBeatsSeed!.Verdict);
        Assert.Equal(0.9, v.FlowBeatsSeed.Claimed.Combined.Mean);
        Assert.Equal(Verdict.Holds, v.BestLayer!.Verdict);
    }

    [Fact]
    public void Verdicts_fail_when_the_claimed_cell_is_clearly_worse()
    {
        var v = Judge(Sweep(cumulativeSmall: 0.1, singleSmall: 0.4, flowBest: 0.2, baselineBest: 0.8,
            bestSingleLayer: 2, bestSingle: 0.7, atSeedLayer: 0.3));
        Assert.Equal(Verdict.Fails, v.CumulativeAtSmallStrength.Overall);
        Assert.Equal(Verdict.Fails, v.FlowBeatsSeed!.Verdict);
        Assert.Equal(Verdict.Fails, v.BestLayer!.Verdict);
        Assert.Equal(2, v.BestLayer.Best.Cell.Layer);
    }

    [Fact]
    public void Overlapping_intervals_are_inconclusive()
    {
        var v = Judge(Sweep(cumulativeSmall: 0.405, singleSmall: 0.4, flowBest: 0.2, baselineBest: 0.605,
            bestSingleLayer: 4, bestSingle: 0.61, atSeedLayer: 0.6));
        Assert.Equal(Verdict.Inconclusive, v.CumulativeAtSmallStrength.Overall);
        Assert.Equal(Verdict.Inconclusive, v.FlowBeatsSeed!.Verdict);
        Assert.Equal(Verdict.Inconclusive, v.BestLayer!.Verdict);
        Assert.Equal(Verdict.Inconclusive, ResultsVerdicts.Compare(Ci(1, double.NaN), Ci(0)));
    }

    [Fact]
    public void A_family_that_steers_the_seed_alone_counts_as_baseline_not_as_flow_graph()
    {
        var cells = Sweep(cumulativeSmall: 0.1, singleSmall: 0.1, flowBest: 0.2, baselineBest: 0.3,
            bestSingleLayer: 3, bestSingle: 0.95, atSeedLayer: 0.95);
        Assert.Equal(Verdict.Holds, Judge(cells).FlowBeatsSeed!.Verdict);
        var v = Judge(cells, c => c.Mode == "single" && c.Layer == 3);
        Assert.Equal(Verdict.Fails, v.FlowBeatsSeed!.Verdict);
        Assert.Equal(0.2, v.FlowBeatsSeed.Claimed.Combined.Mean);
    }

    [Fact]
    public void A_one_layer_graph_has_no_cumulative_verdict()
    {
        CellSummary[] cells = [Unsteered, Cell("single", 4, 1, 0.1, 2, 0.1), Cell("cumulative", 4, 1, 0.1, 2, 0.1)];
        var v = ResultsVerdicts.Judge(cells, 4, 4, 4, _ => false, 2);
        Assert.Equal(Verdict.NotApplicable, v.CumulativeAtSmallStrength.Overall);
        Assert.Null(v.FlowBeatsSeed);
    }

    [Fact]
    public void The_checked_in_spec_parses_and_its_packs_name_its_sweeps()
    {
        var spec = ResultsSpec.Load(SpecPath);
        Assert.Equal(32, spec.Sweep.Seeds);
        Assert.Equal(SweepOptions.DefaultPrompts, spec.Sweep.Prompts);
        Assert.Equal(8192, spec.Fidelity.Tokens);
        Assert.Contains(spec.Packs, p => p.Name == "no-mom-flow" && p.Mode == SweepMode.Cumulative && p.Layer == 4);
        Assert.All(spec.Packs, p => Assert.Contains(spec.Themes.Single(t => t.Name == p.Theme).Sweeps,
            s => s.Variant == p.Sweep));
    }

    [Theory]
    [InlineData("sweep", "seeds", null, "spec.sweep.seeds: missing")]
    [InlineData("sweep", "seeds", "0", "spec.sweep.seeds: 0 is outside 1..")]
    [InlineData("sweep", "top_p", "\"high\"", "spec.sweep.top_p: expected a finite number")]
    [InlineData("matches", "deactivation", "\"erase\"",
        "spec.matches.deactivation: 'erase' is not one of remove, zero")]
    [InlineData("fidelity", "tokens", "100", "spec.fidelity.tokens: 100 is outside 128..")]
    [InlineData("ship_rule", "max_perplexity_ratio", "0.5", "spec.ship_rule.max_perplexity_ratio: 0.5 is outside 1..")]
    [InlineData("themes[0]", "seed", "\"3/foo/1\"", "spec.themes[0].seed:")]
    [InlineData("themes[0]", "operation", "\"clamp\"", "spec.themes[0].operation: clamp is not swept")]
    [InlineData("themes[0]", "sede", "\"3/res/145\"", "spec.themes[0].sede: unknown field")]
    [InlineData("themes[0]", "theme_words", "[]", "spec.themes[0].theme_words: give at least one")]
    [InlineData("themes[0].sweeps[0]", "strengths", "[0.1, \"x\"]",
        "spec.themes[0].sweeps[0].strengths[1]: expected a finite number")]
    [InlineData("themes[0].sweeps[0]", "units", "\"sigma\"",
        "spec.themes[0].sweeps[0].units: expected raw or threshold")]
    [InlineData("packs[0]", "theme", "\"moon\"", "spec.packs[0].theme: no theme named 'moon'")]
    [InlineData("packs[0]", "sweep", "\"log\"", "spec.packs[0].sweep: theme 'mom' has no sweep 'log'")]
    [InlineData("packs[0]", "layer", null, "spec.packs[0].layer: single and cumulative need a layer")]
    [InlineData("packs[0]", "name", "\"No Mom\"", "spec.packs[0].name: 'No Mom' must be lower-case")]
    public void A_spec_error_names_the_field(string objectPath, string field, string? value, string expected)
    {
        var root = JsonNode.Parse(File.ReadAllText(SpecPath))!;
        var target = objectPath.Split('.').Aggregate(root, (node, part) =>
        {
            var bracket = part.IndexOf('[');
            return bracket < 0 ? node[part]! : node[part[..bracket]]![int.Parse(part[(bracket + 1)..^1])]!;
        }).AsObject();
        if (value is null) target.Remove(field);
        else target[field] = JsonNode.Parse(value);
        var e = Assert.Throws<InvalidDataException>(() => ResultsSpec.Parse(root.ToJsonString()));
        Assert.StartsWith(expected, e.Message);
    }

    /// <summary>Every step on a tiny grid: 2 stories for matches, 128 fidelity tokens, 2 seeds × 8 tokens.</summary>
    private static ResultsSpec TinySpec()
    {
        var spec = ResultsSpec.Load(SpecPath);
        var sun = spec.Themes.Single(t => t.Name == "sun");
        var mom = spec.Themes.Single(t => t.Name == "mom");
        return spec with
        {
            Sweep = new ResultsSweepSettings(2, 8, 1, 0.9f, ["", "Once upon a time,"]),
            Matches = spec.Matches with { Sequences = 2, Tokens = 8, SamplesPerLayer = 4 },
            Fidelity = new ResultsFidelitySettings(128, 500_000),
            Themes =
            [
                sun with
                {
                    Sweeps = [sun.Sweeps.Single(s => s.Variant == "threshold") with { Strengths = [0.1f, 0.2f] }],
                },
                mom with { Sweeps = [mom.Sweeps[0] with { Strengths = [1f, 3f] }] },
            ],
        };
    }

    private ResultsInputs Inputs() =>
        new(f.Folder, f.Saes, f.Map, Path.Combine(f.Folder.Directory, "flow", Flow.FlowMap.FileName));

    [Fact]
    public async Task A_tiny_run_writes_every_section_without_nan_and_a_rerun_reuses_every_step()
    {
        var spec = TinySpec();
        var inputs = Inputs();
        var work = Path.Combine(_dir, "work");
        var run = await ResultsRunner.RunAsync(inputs, spec, work, 16, TextWriter.Null, (_, _) => (_, _) => { });
        Assert.All(run.Steps, s => Assert.False(s.Reused, s.Step));
        var packs = ResultsPacks.Decide(run, f.Saes, f.Folder);
        Assert.Equal(["no-mom-flow", "sun-flow"], packs.Select(p => p.Spec.Name));

        var doc = Path.Combine(_dir, "docs", "results.md");
        var figures = Path.Combine(_dir, "docs", "results");
        var context = new ResultsContext("featureflow eval results --spec tiny.json", SpecPath, doc, figures,
            f.Folder.Directory, Path.Combine(_dir, "packs"), DateTimeOffset.UnixEpoch, ResultsDocument.Machine(),
            TimeSpan.FromSeconds(12.25), Shipped: false);
        var files = ResultsDocument.Write(run, packs, context);
        var text = File.ReadAllText(doc);
        string[] sections =
        [
            "featureflow eval results --spec tiny.json", "| machine | ", "| date | 1970-01-01 00:00 UTC |",
            "| wall time | 12 s", "## How the sweeps are measured", "## Match validation",
            "| the paper (Gemma 2 2B, Gemma Scope) | | 65.0 % | 0.75 |", "| all three | **all** |",
            "## Hook fidelity", "| shipped | `blocks.4.hook_resid_post` |", "## Flow-graph chain lengths",
            "| shipped map, cut 0.5 | 0.5 | chance | 2560 |", "## Theme `sun`: Weather: sunshine",
            "| 0 | `0/att/133` (attn, 0.53) · `0/res/388` (backward, 0.59) |", "### `sun`, threshold units",
            "![score_vs_strength of sun/threshold](results/sun/threshold/score_vs_strength.png)",
            "## Theme `mom`", "- **Cumulative beats single-layer at small strength: ",
            "- **Flow-graph features beat the seed alone: ", "- **The best layer is the seed's layer (2): ",
            "## Packs chosen by the ship rule", "### `no-mom-flow`: mom, raw units, cumulative L4 constant",
            "![sweep curve of sun-flow](results/sun/threshold/pack-sun-flow.png)", "This run did not ship",
            "## What does not hold on a model this small", "| mom/raw |", "- Match validation: ", "- Chains (",
        ];
        Assert.All(sections, s => Assert.Contains(s, text));
        Assert.DoesNotContain("NaN", text);
        Assert.DoesNotContain("∞", text);
        Assert.All(files, file => Assert.True(File.Exists(file), file));
        Assert.Contains(files, file => file.EndsWith(Path.Combine("mom", "raw", "summary.csv")));
        Assert.Contains(files, file => file.EndsWith(Path.Combine("sun", "graph.svg")));
        Assert.DoesNotContain(files, file => file.EndsWith(SweepRunner.RowsFile));

        var again = await ResultsRunner.RunAsync(inputs, spec, work, 16, TextWriter.Null, (_, _) => (_, _) => { });
        Assert.All(again.Steps, s => Assert.True(s.Reused, s.Step));
        Assert.Equal(run.Matches.Summary, again.Matches.Summary);
        Assert.Equal(run.Fidelity, again.Fidelity);
        Assert.Equal(run.Chains.Select(c => c.Counts), again.Chains.Select(c => c.Counts));
        // The same document, but for the steps table saying what was reused.
        Assert.Equal(ResultsDocument.Markdown(run with { Steps = again.Steps }, packs, context),
            ResultsDocument.Markdown(again, packs, context));
    }

    [Fact]
    public async Task A_shipped_pack_is_byte_for_byte_what_its_recorded_steer_build_command_builds()
    {
        var spec = TinySpec();
        var inputs = Inputs();
        var run = await ResultsRunner.RunAsync(inputs, spec, Path.Combine(_dir, "work"), 16, TextWriter.Null,
            (_, _) => (_, _) => { });
        foreach (var packSpec in spec.Packs)
        {
            var pack = ResultsPacks.Build(packSpec, run.Sweep(packSpec.Theme, packSpec.Sweep), 0.75f, 1.5f, f.Saes,
                f.Folder);
            Assert.True(pack.Terms.Select(t => t.Site.Layer).Distinct().Count() >= spec.Rule.MinBlocks);
            var shipped = Path.Combine(_dir, "shipped");
            ResultsPacks.Write(new PackDecision(packSpec, run.Sweep(packSpec.Theme, packSpec.Sweep),
                ResultsVerdicts.ChooseStrength(run.Sweep(packSpec.Theme, packSpec.Sweep).Cells,
                    packSpec.Mode.ToString().ToLowerInvariant(), packSpec.Layer, 1.5), pack, null), shipped);

            var rebuilt = Path.Combine(_dir, "rebuilt");
            var args = SplitCommand(pack.Metadata.BuildCommand).Skip(1)
                .Concat(["--packs", rebuilt, "--model", f.Folder.Directory]).ToArray();
            var error = new StringWriter();
            Assert.True(await CliApp.Build(TextWriter.Null, error).Parse(args).InvokeAsync() == 0, error.ToString());
            var name = pack.Name + SteeringPack.Extension;
            var fromCli = SteeringPack.Read(Path.Combine(rebuilt, name), f.Folder.Manifest);
            // The same terms and metadata; the CLI records its own command line: the given one, --packs, --model.
            Assert.Equal(pack.Metadata.ContentSha256, fromCli.Metadata.ContentSha256);
            Assert.Equal(Json(pack.Metadata with { BuildCommand = "" }),
                Json(fromCli.Metadata with { BuildCommand = "" }));
            Assert.Equal($"{pack.Metadata.BuildCommand} --packs {rebuilt} --model {f.Folder.Directory}",
                fromCli.Metadata.BuildCommand);
            Assert.Equal(File.ReadAllText(Path.Combine(shipped, pack.Name + ".svg")),
                File.ReadAllText(Path.Combine(rebuilt, pack.Name + ".svg")));
        }
    }

    private static string Json(PackMetadata m) => System.Text.Json.JsonSerializer.Serialize(m);

    /// <summary>Splits a recorded command line: spaces separate, double quotes group.</summary>
    private static IEnumerable<string> SplitCommand(string line)
    {
        var parts = new List<string>();
        var current = new System.Text.StringBuilder();
        var quoted = false;
        foreach (var c in line)
        {
            if (c == '"') quoted = !quoted;
            else if (c == ' ' && !quoted)
            {
                if (current.Length > 0) parts.Add(current.ToString());
                current.Clear();
            }
            else current.Append(c);
        }
        if (current.Length > 0) parts.Add(current.ToString());
        return parts;
    }
}
