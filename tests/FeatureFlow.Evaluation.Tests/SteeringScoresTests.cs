using FeatureFlow.Evaluation;
using FeatureFlow.Models;
using FeatureFlow.Sae;

namespace FeatureFlow.Evaluation.Tests;

/// <summary>The pure scorers on fixed inputs, against values worked out by hand.</summary>
public sealed class SteeringScoresTests
{
    [Fact]
    public void Perplexity_is_exp_of_minus_the_mean_log_probability()
    {
        // log p = ln ½, ln ¼: mean −(ln 2 + ln 4)/2 = −1.5 ln 2, so ppl = 2^1.5.
        Assert.Equal(Math.Pow(2, 1.5), SteeringScores.Perplexity([Math.Log(0.5), Math.Log(0.25)]), 12);
        Assert.True(double.IsNaN(SteeringScores.Perplexity([])));
    }

    [Fact]
    public void Feature_activation_encodes_each_generated_position_with_the_whole_sae()
    {
        // ReLU SAE, d = 2, two features: z = ReLU(x) with identity encoder, no biases.
        var sae = new SparseAutoencoder(2, 2, SaeActivation.Relu, new Site(0, SiteKind.ResidPost))
        {
            ApplyDecoderBiasToInput = false,
        };
        sae.Encoder[0] = 1;
        sae.Encoder[3] = 1;
        float[] values = [1, -1, 0.5f, 2, -3, 0, 4, 4];
        // Positions 1 and 2 (the "generated" ones): feature 0 is 0.5 and 0 → mean 0.25, active on one of two.
        var (activation, share) = SteeringScores.FeatureActivation(values, 1, 2, sae, 0);
        Assert.Equal(0.25, activation, 12);
        Assert.Equal(0.5, share, 12);
        (activation, share) = SteeringScores.FeatureActivation(values, 1, 3, sae, 1);
        Assert.Equal(2.0, activation, 6);
        Assert.Equal(2 / 3.0, share, 12);
        Assert.Throws<ArgumentException>(() => SteeringScores.FeatureActivation(values, 3, 2, sae, 0));
    }

    [Fact]
    public void Theme_word_rate_counts_whole_words_case_insensitively()
    {
        // Words: Tim, was, happy, He, was, GLAD, so, glad, don't → 9; theme words: happy, GLAD, glad.
        var rate = SteeringScores.ThemeWordRate("Tim was happy. He was GLAD, so glad! don't", ["happy", "glad"]);
        Assert.Equal(3 / 9.0, rate, 12);
        Assert.Equal(0, SteeringScores.ThemeWordRate("unhappy gladly", ["happy", "glad"]));
        Assert.Equal(0, SteeringScores.ThemeWordRate(" ... ", ["happy"]));
    }

    [Theory]
    [InlineData(2.0, 2.0, 1.0)]     // as coherent as unsteered
    [InlineData(1.5, 2.0, 1.0)]     // more predictable than unsteered is not rewarded past 1
    [InlineData(4.0, 2.0, 0.5)]     // doubling perplexity halves coherence
    [InlineData(200.0, 2.0, 0.01)]
    [InlineData(double.PositiveInfinity, 2.0, 0.0)]
    [InlineData(double.NaN, 2.0, 0.0)] // no tokens
    public void Coherence_is_the_perplexity_ratio_capped_at_one(double ppl, double ppl0, double expected) =>
        Assert.Equal(expected, SteeringScores.Coherence(ppl, ppl0), 12);

    [Theory]
    [InlineData(SteeringGoal.Promote, 0.3, 0.01, 0.3)]   // promotion: the share itself
    [InlineData(SteeringGoal.Promote, double.NaN, 0.01, 0.0)]
    [InlineData(SteeringGoal.Suppress, 0.05, 0.1, 0.5)]  // half the baseline removed
    [InlineData(SteeringGoal.Suppress, 0.0, 0.1, 1.0)]   // all removed
    [InlineData(SteeringGoal.Suppress, 0.2, 0.1, 0.0)]   // raised: clamped at 0
    [InlineData(SteeringGoal.Suppress, 0.0, 0.0, 1.0)]   // nothing to remove, nothing there
    [InlineData(SteeringGoal.Suppress, 0.1, 0.0, 0.0)]   // nothing to remove, but it appeared
    public void Behaviour_is_the_share_for_promotion_and_the_removed_fraction_for_suppression(
        SteeringGoal goal, double share, double baseline, double expected) =>
        Assert.Equal(expected, SteeringScores.Behaviour(goal, share, baseline), 12);

    [Fact]
    public void Combined_and_judge_scores_multiply_behaviour_and_coherence()
    {
        Assert.Equal(0.15, SteeringScores.Combined(0.3, 0.5), 12);
        Assert.Equal(0.8 * 0.6, SteeringScores.JudgeScore(SteeringGoal.Promote, 4, 3), 12);
        Assert.Equal(0.8 * 0.6, SteeringScores.JudgeScore(SteeringGoal.Suppress, 1, 3), 12);
    }

    [Fact]
    public void Baseline_is_the_mean_share_and_the_geometric_mean_perplexity_of_generations_with_tokens()
    {
        var b = SteeringScores.BaselineOf([(0.1, 2.0), (0.3, 8.0), (0.9, double.NaN)]);
        Assert.Equal(0.2, b.Behaviour, 12);
        Assert.Equal(4.0, b.Perplexity, 12);
    }

    [Fact]
    public void Interval_is_mean_plus_minus_t_sd_over_root_n()
    {
        // 1, 2, 3, 4: mean 2.5, sd √(5/3), t(0.975, 3) = 3.18244630528371 → 3.18244630528371 · 1.29099444873581 / 2.
        var ci = ConfidenceInterval.Of([1, 2, 3, double.NaN, 4]);
        Assert.Equal(4, ci.N);
        Assert.Equal(2.5, ci.Mean, 12);
        Assert.Equal(3.18244630528371 * 1.29099444873581 / 2, ci.HalfWidth, 9);
        Assert.True(double.IsNaN(ConfidenceInterval.Of([7]).HalfWidth));
        Assert.Equal(7, ConfidenceInterval.Of([7]).Mean);
        Assert.Equal(0, ConfidenceInterval.Of([]).N);
    }

    [Fact]
    public void Csv_rows_round_trip_text_with_commas_quotes_and_line_breaks_and_drop_a_cut_off_last_line()
    {
        var row = new SweepRow
        {
            Mode = "single", Layer = 3, Schedule = "constant", Strength = 0.1f, Seed = 7, Prompt = "Once, \"upon\"",
            Tokens = 3, Activation = 0.1 + 0.2, ActiveShare = 1 / 3.0, ThemeRate = 0, Perplexity = Math.PI,
            Text = "a,b \"c\"\nd", TokenIds = [5, 6, 7],
        };
        var text = string.Join(",", SweepRow.Columns) + "\n" + row.ToCsv() + "\n" + row.ToCsv()[..20];
        var records = Csv.Parse(text, out var truncated);
        Assert.True(truncated);
        Assert.Equal(2, records.Count);
        var back = SweepRow.FromCsv(records[1]);
        Assert.Equal(row.Key, back.Key);
        Assert.Equal(row.Text, back.Text);
        Assert.Equal(row.Activation, back.Activation);
        Assert.Equal(row.Perplexity, back.Perplexity);
        Assert.True(double.IsNaN(back.Combined));
        Assert.Equal(row.TokenIds, back.TokenIds);
    }
}
