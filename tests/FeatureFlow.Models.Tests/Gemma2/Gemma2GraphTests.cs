using FeatureFlow.Engine;
using FeatureFlow.Models.Gemma2;
using FeatureFlow.Steering;
using static FeatureFlow.Models.Tests.Gemma2.Gemma2Fixture;

namespace FeatureFlow.Models.Tests.Gemma2;

/// <summary>
/// The exported Gemma 2 graphs, run by ONNX Runtime, against the plain C# reference forward pass over a sequence
/// three times the sliding window: Concat graphs through <see cref="HookedDecoder"/> (prefilled at once, token by
/// token and in chunks), SharedBuffer graphs (GroupQueryAttention) through the batching engine's
/// <see cref="ModelRunner"/>.
/// </summary>
public class Gemma2GraphTests(Gemma2Fixture f) : IClassFixture<Gemma2Fixture>
{
    private const double Tolerance = 1e-4;
    private static readonly int[] Sequence = TinyGemma2.Sequence;

    public static TheoryData<string> ChunkingCases() => new(Chunkings.Keys);

    /// <summary>How a sequence is fed: the token count of each run.</summary>
    private static readonly Dictionary<string, int[]> Chunkings = new()
    {
        ["all at once"] = [12],
        ["one token at a time"] = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        ["prefill 6 then decode"] = [6, 1, 1, 1, 1, 1, 1],
        ["chunks of 3, 5 and 4"] = [3, 5, 4],
    };

    private static FeatureVector Feature(int seed, float threshold = 0f)
    {
        var rng = new Random(seed);
        var v = Numerics.RandomVector(rng, TinyGemma2.DModel);
        var norm = MathF.Sqrt(v.Sum(x => x * x));
        return new FeatureVector(v.Select(x => x / norm).ToArray(), Numerics.RandomVector(rng, TinyGemma2.DModel, 0.5f),
            0.1f, threshold);
    }

    private static readonly Dictionary<string, SteeringTerm[]> Interventions = new()
    {
        ["add at blocks.1.hook_attn_out"] = [new(new Site(1, SiteKind.AttnOut), SteeringOperation.Add, 4f, Feature(1))],
        ["rescale r=-2 at blocks.2.hook_mlp_out"] =
            [new(new Site(2, SiteKind.MlpOut), SteeringOperation.Rescale, -2f, Feature(2))],
        ["clamp c=3 (JumpReLU 0.1) at blocks.0.hook_resid_post"] =
            [new(new Site(0, SiteKind.ResidPost), SteeringOperation.Clamp, 3f, Feature(3, threshold: 0.1f))],
        ["several sites and layers"] =
        [
            new(new Site(0, SiteKind.AttnOut), SteeringOperation.Add, 2f, Feature(4)),
            new(new Site(1, SiteKind.MlpOut), SteeringOperation.Rescale, -1f, Feature(5)),
            new(new Site(3, SiteKind.ResidPost), SteeringOperation.Clamp, 2f, Feature(6, threshold: 0.1f)),
            new(new Site(3, SiteKind.AttnOut), SteeringOperation.Add, -3f, Feature(7)),
        ],
    };

    public static TheoryData<string> InterventionCases() => new(Interventions.Keys);

    private SteeringTensors Steering(string intervention) =>
        new SteeringCompiler(f.Shape).Compile(new SteeringSpec(Interventions[intervention])).Prompt;

    /// <summary>The reference's logits at every position of <see cref="Sequence"/>.</summary>
    private float[][] ReferenceLogits(SteeringTensors? steering = null, Gemma2Config? config = null)
    {
        var reference = f.Reference(config);
        return Sequence.Select((token, pos) => reference.Forward(token, pos, steering)).ToArray();
    }

    /// <summary>A Concat graph's logits at every position, fed in runs of <paramref name="chunks"/> tokens.</summary>
    private static float[][] ConcatLogits(HookedDecoder decoder, int[] chunks, SteeringTensors? steering)
    {
        using var state = decoder.NewState();
        using var bound = steering is null ? null : decoder.Bind(steering);
        var vocab = decoder.Architecture.VocabSize;
        var logits = new List<float[]>();
        var start = 0;
        foreach (var count in chunks)
        {
            var run = decoder.Forward(state, Sequence.AsSpan(start, count), bound);
            for (var i = 0; i < count; i++) logits.Add(run.AsSpan(i * vocab, vocab).ToArray());
            start += count;
        }
        Assert.Equal(Sequence.Length, start);
        return logits.ToArray();
    }

    /// <summary>
    /// Through the batching engine's runner: the first <paramref name="prefill"/> tokens in one prefill (its last
    /// position's logits), then one decode step per remaining token. Returns logits from position prefill − 1 on.
    /// </summary>
    private float[][] BatchedLogits(int prefill, SteeringTensors? steering, bool withPlainGraph = false,
        Gemma2Config? config = null)
    {
        var arch = (config ?? f.Config).Architecture;
        using var runner = new ModelRunner(f.Graph(HookedBatched, config),
            withPlainGraph ? f.Graph(PlainBatched, config) : null, arch, Cpu with { MaxBatchRows = 1 });
        runner.Steering.Write(0, steering ?? new SteeringTensors(f.Shape));
        var logits = new List<float[]> { runner.Prefill(0, Sequence.AsSpan(0, prefill), [], []).ToArray() };
        var readers = new int[f.Shape.Sites];
        for (var pos = prefill; pos < Sequence.Length; pos++)
        {
            runner.SetNextToken(0, Sequence[pos]);
            logits.Add(runner.Decode(1, readers).ToArray());
        }
        return logits.ToArray();
    }

    private static void AssertClose(float[][] actual, float[][] expected, int firstPosition, string what)
    {
        Assert.Equal(expected.Length - firstPosition, actual.Length);
        for (var i = 0; i < actual.Length; i++)
        {
            var rel = Numerics.RelativeL2(actual[i], expected[firstPosition + i]);
            Assert.True(rel <= Tolerance, $"{what}, position {firstPosition + i}: relative L2 {rel:E2}");
        }
    }

    private static double LargestDifference(float[][] a, float[][] b) =>
        a.Zip(b, (x, y) => Numerics.RelativeL2(x, y)).Max();

    [Theory]
    [MemberData(nameof(ChunkingCases))]
    public void Plain_graph_matches_the_reference_at_every_position(string chunking)
    {
        using var decoder = f.Decoder(Plain);
        AssertClose(ConcatLogits(decoder, Chunkings[chunking], null), ReferenceLogits(), 0, $"plain graph, {chunking}");
    }

    [Theory]
    [MemberData(nameof(ChunkingCases))]
    public void Hooked_graph_with_zero_steering_is_bit_identical_to_the_plain_graph(string chunking)
    {
        using var plain = f.Decoder(Plain);
        using var hooked = f.Decoder(Hooked);
        var expected = ConcatLogits(plain, Chunkings[chunking], null);
        var actual = ConcatLogits(hooked, Chunkings[chunking], new SteeringTensors(f.Shape));
        for (var pos = 0; pos < Sequence.Length; pos++)
            Assert.True(actual[pos].AsSpan().SequenceEqual(expected[pos]), $"{chunking}, position {pos}");
    }

    [Theory]
    [MemberData(nameof(InterventionCases))]
    public void Steered_hooked_graph_matches_the_reference_with_the_same_intervention(string name)
    {
        var steering = Steering(name);
        var expected = ReferenceLogits(steering);
        using var decoder = f.Decoder(Hooked);
        foreach (var (chunking, chunks) in Chunkings)
            AssertClose(ConcatLogits(decoder, chunks, steering), expected, 0, $"{name}, {chunking}");
        // The intervention must move the logits, or the comparison proves nothing about the hook's placement.
        var effect = LargestDifference(expected, ReferenceLogits());
        Assert.True(effect > 1e-2, $"{name}: steering moved the reference's logits by only {effect:E2}");
    }

    /// <summary>
    /// The hooked graph's read-out of every site equals the reference's: attn_out and mlp_out after their post-norms
    /// (what each branch adds to the residual stream, TransformerLens's convention), resid_post the block's output.
    /// </summary>
    [Fact]
    public void Site_outputs_are_what_each_branch_adds_to_the_residual_stream()
    {
        var steering = Steering("several sites and layers");
        var reference = f.Reference();
        var expected = Sequence.Select((token, pos) =>
        {
            var sites = new Dictionary<Site, float[]>();
            reference.Forward(token, pos, steering, sites);
            return sites;
        }).ToArray();
        var all = Site.All(f.Architecture.Layers).ToArray();
        var d = f.Architecture.DModel;
        using var decoder = f.Decoder(Hooked);
        using var state = decoder.NewState();
        using var bound = decoder.Bind(steering);
        var start = 0;
        foreach (var count in Chunkings["prefill 6 then decode"])
        {
            var output = decoder.Run(state, Sequence.AsSpan(start, count), bound, all);
            for (var i = 0; i < count; i++)
                for (var s = 0; s < all.Length; s++)
                {
                    var rel = Numerics.RelativeL2(output.Sites[s].AsSpan(i * d, d), expected[start + i][all[s]]);
                    Assert.True(rel <= Tolerance, $"{all[s]}, position {start + i}: relative L2 {rel:E2}");
                }
            start += count;
        }
    }

    public static TheoryData<int, bool> BatchedCases() => new()
    {
        { 12, false }, { 1, false }, { 6, false }, { 12, true }, { 1, true }, { 6, true },
    };

    [Theory]
    [MemberData(nameof(BatchedCases))]
    public void Batched_graph_matches_the_reference_prefilled_then_decoded(int prefill, bool withPlainGraph)
    {
        var expected = ReferenceLogits();
        AssertClose(BatchedLogits(prefill, null, withPlainGraph), expected, prefill - 1,
            $"batched {(withPlainGraph ? "plain" : "hooked")} graph, prefill {prefill}");
    }

    [Theory]
    [MemberData(nameof(InterventionCases))]
    public void Steered_batched_graph_matches_the_reference_with_the_same_intervention(string name)
    {
        var steering = Steering(name);
        var expected = ReferenceLogits(steering);
        AssertClose(BatchedLogits(1, steering), expected, 0, $"{name}, token by token");
        AssertClose(BatchedLogits(7, steering), expected, 6, $"{name}, prefill 7 then decode");
    }

    /// <summary>
    /// Two rows of different lengths (so different windows) and different steering decode in one step, each against
    /// its own reference: GroupQueryAttention's window follows each row's seqlens_k.
    /// </summary>
    [Fact]
    public void Batched_rows_of_different_lengths_each_match_their_reference()
    {
        var steering = Steering("several sites and layers");
        int[] other = [.. Sequence.Reverse()];
        using var runner = new ModelRunner(f.Graph(HookedBatched), f.Graph(PlainBatched), f.Architecture,
            Cpu with { MaxBatchRows = 2 });
        runner.Steering.Write(0, steering);
        runner.Steering.Write(1, new SteeringTensors(f.Shape));
        const int first = 7, second = 2, steps = 5;
        var steeredReference = f.Reference();
        var plainReference = f.Reference();
        for (var pos = 0; pos < first - 1; pos++) steeredReference.Forward(Sequence[pos], pos, steering);
        for (var pos = 0; pos < second - 1; pos++) plainReference.Forward(other[pos], pos);
        void Check(ReadOnlySpan<float> actual, float[] expected, string what)
        {
            var rel = Numerics.RelativeL2(actual, expected);
            Assert.True(rel <= Tolerance, $"{what}: relative L2 {rel:E2}");
        }
        Check(runner.Prefill(0, Sequence.AsSpan(0, first), [], []),
            steeredReference.Forward(Sequence[first - 1], first - 1, steering), "row 0 prefill");
        Check(runner.Prefill(1, other.AsSpan(0, second), [], []),
            plainReference.Forward(other[second - 1], second - 1), "row 1 prefill");
        var vocab = f.Architecture.VocabSize;
        for (var step = 0; step < steps; step++)
        {
            runner.SetNextToken(0, Sequence[first + step]);
            runner.SetNextToken(1, other[second + step]);
            var logits = runner.Decode(2, new int[f.Shape.Sites]);
            Check(logits[..vocab], steeredReference.Forward(Sequence[first + step], first + step, steering),
                $"row 0, decode step {step}");
            Check(logits[vocab..], plainReference.Forward(other[second + step], second + step),
                $"row 1, decode step {step}");
        }
    }

    public static TheoryData<string> FeatureCases() => new(["sliding window", "attention soft-cap", "final soft-cap"]);

    private Gemma2Config Without(string feature) => feature switch
    {
        "sliding window" => f.Config with { SlidingLayers = [.. f.Config.SlidingLayers.Select(_ => false)] },
        "attention soft-cap" => f.Config with { AttentionLogitSoftcap = null },
        "final soft-cap" => f.Config with { FinalLogitSoftcap = null },
        _ => throw new ArgumentOutOfRangeException(nameof(feature)),
    };

    /// <summary>
    /// Each Gemma-only feature changes this model's logits by far more than the tolerance, so a graph that ignored it
    /// would fail the comparisons above; and the exporter follows the config both ways (the graphs of the config
    /// with the feature off match the reference with it off).
    /// </summary>
    [Theory]
    [MemberData(nameof(FeatureCases))]
    public void Each_gemma_feature_matters_and_the_graphs_follow_it(string feature)
    {
        var without = Without(feature);
        var expected = ReferenceLogits(config: without);
        var effect = LargestDifference(expected, ReferenceLogits());
        Assert.True(effect > 100 * Tolerance, $"{feature}: switching it off moved the logits by only {effect:E2}");
        using var decoder = f.Decoder(Plain, without);
        AssertClose(ConcatLogits(decoder, Chunkings["prefill 6 then decode"], null), expected, 0,
            $"plain graph without {feature}");
        AssertClose(BatchedLogits(6, null, config: without), expected, 5, $"batched graph without {feature}");
    }
}
