using FeatureFlow.Models;
using FeatureFlow.Sae.Training;

namespace FeatureFlow.Sae.Tests;

public class TopKTrainerTests
{
    /// <summary>Each token is a sparse non-negative mix of 3 of 48 fixed directions in 16 dimensions.</summary>
    private static float[] SparseData(int tokens, int seed)
    {
        const int d = 16, atoms = 48;
        var rng = new Random(seed);
        var dictionary = Numerics.RandomVector(new Random(99), atoms * d);
        var data = new float[tokens * d];
        for (var t = 0; t < tokens; t++)
            for (var k = 0; k < 3; k++)
            {
                var a = rng.Next(atoms);
                var c = (float)(0.5 + rng.NextDouble());
                for (var i = 0; i < d; i++) data[t * d + i] += c * dictionary[a * d + i];
            }
        return data;
    }

    private static readonly TopKTrainingOptions Options = new() { DSae = 64, K = 4, Epochs = 10, BatchSize = 256, LearningRate = 3e-3f, DeadAfterTokens = 5000, ResampleEverySteps = 40 };

    [Fact]
    public void Learns_sparse_data_well_on_held_out_tokens()
    {
        var (sae, _, heldOut) = TopKTrainer.Train(SparseData(20_000, 1), 16, new Site(0, SiteKind.ResidPost), "synthetic", Options);
        Assert.True(heldOut.Fvu < 0.15, $"held-out FVU {heldOut.Fvu:F3}");
        Assert.Equal(4.0, heldOut.MeanL0, 1);
        Assert.True(heldOut.DeadShare < 0.1, $"dead share {heldOut.DeadShare:P1}");
        Assert.Equal(heldOut.Fvu.ToString("R", System.Globalization.CultureInfo.InvariantCulture), sae.Metadata["held_out_fvu"]);
        for (var j = 0; j < sae.DSae; j++)
        {
            var norm = MathF.Sqrt(sae.DecoderRow(j).ToArray().Sum(v => v * v));
            Assert.InRange(norm, 0.999f, 1.001f);
        }
    }

    [Fact]
    public void Same_seed_gives_bit_identical_weights_and_another_seed_does_not()
    {
        var data = SparseData(6_000, 2);
        var quick = Options with { Epochs = 1 };
        var a = TopKTrainer.Train(data, 16, new Site(0, SiteKind.MlpOut), "m", quick).Sae;
        var b = TopKTrainer.Train(data, 16, new Site(0, SiteKind.MlpOut), "m", quick).Sae;
        var c = TopKTrainer.Train(data, 16, new Site(0, SiteKind.MlpOut), "m", quick with { Seed = 2 }).Sae;
        Assert.Equal(a.Encoder, b.Encoder);
        Assert.Equal(a.Decoder, b.Decoder);
        Assert.Equal(a.DecoderBias, b.DecoderBias);
        Assert.Equal(a.Threshold, b.Threshold);
        Assert.NotEqual(a.Decoder, c.Decoder);
    }

    [Theory]
    [InlineData(ThresholdRule.SelectedPercentile)]
    [InlineData(ThresholdRule.RateMatched)]
    [InlineData(ThresholdRule.MaxJaccard)]
    public void The_trainer_sets_thresholds_by_its_rule_from_training_tokens_and_records_it(ThresholdRule rule)
    {
        var data = SparseData(6_000, 5);
        var options = Options with { Epochs = 1, Thresholds = rule };
        var sae = TopKTrainer.Train(data, 16, new Site(0, SiteKind.AttnOut), "m", options).Sae;
        var trained = sae.Threshold.ToArray();
        // The first 90 % are the training tokens (fewer than the 100,000 the trainer calibrates on at most).
        ThresholdCalibration.Calibrate(sae, data.AsSpan(0, 5_400 * 16), rule);
        Assert.Equal(sae.Threshold, trained);
        Assert.Equal(rule.ToString(), sae.Metadata["threshold_rule"]);
    }

    [Fact]
    public void The_default_rule_is_max_jaccard_and_differs_from_the_first_rule_only_in_thresholds()
    {
        var data = SparseData(6_000, 6);
        var quick = Options with { Epochs = 1 };
        Assert.Equal(ThresholdRule.MaxJaccard, quick.Thresholds);
        var now = TopKTrainer.Train(data, 16, new Site(0, SiteKind.AttnOut), "m", quick).Sae;
        var old = quick with { Thresholds = ThresholdRule.SelectedPercentile };
        var first = TopKTrainer.Train(data, 16, new Site(0, SiteKind.AttnOut), "m", old).Sae;
        Assert.Equal(first.Encoder, now.Encoder);
        Assert.Equal(first.Decoder, now.Decoder);
        Assert.NotEqual(first.Threshold, now.Threshold);
    }

    [Fact]
    public void Each_site_starts_from_its_own_initialisation()
    {
        // Shared initial decoders would keep feature j of every site aligned and fake cross-layer matches.
        var data = SparseData(3_000, 3);
        var quick = Options with { Epochs = 1 };
        var a = TopKTrainer.Train(data, 16, new Site(1, SiteKind.ResidPost), "m", quick).Sae;
        var b = TopKTrainer.Train(data, 16, new Site(2, SiteKind.ResidPost), "m", quick).Sae;
        var meanCos = Enumerable.Range(0, a.DSae).Average(j => Math.Abs(a.DecoderRow(j).ToArray().Zip(b.DecoderRow(j).ToArray(), (x, y) => x * y).Sum()));
        Assert.True(meanCos < 0.5, $"same-index decoder rows of two sites have mean |cos| {meanCos:F2}");
    }

    [Fact]
    public void Top_k_keeps_the_largest_positive_values_and_breaks_ties_by_index()
    {
        float[] v = [1f, 3f, 3f, -2f, 0.5f, 3f];
        SparseAutoencoder.KeepTopK(v, 2);
        Assert.Equal([0f, 3f, 3f, 0f, 0f, 0f], v);
        float[] negative = [-1f, -2f, 0.25f];
        SparseAutoencoder.KeepTopK(negative, 2);
        Assert.Equal([0f, 0f, 0.25f], negative);
    }
}
