using FeatureFlow.Models;
using FeatureFlow.Steering;

namespace FeatureFlow.Engine.Tests;

/// <summary>The exported graphs against each other and against the plain C# reference forward pass.</summary>
public class GraphNumericsTests(EngineFixture f) : IClassFixture<EngineFixture>
{
    private static readonly int[] Prompt = [1, 403, 407, 261, 378]; // BOS "Once upon a time"
    private const int Vocab = 512;

    [Fact]
    public void Hooked_graph_with_zero_steering_matches_the_plain_graph_over_prefill_and_20_decode_steps()
    {
        using var plainState = f.Plain.NewState();
        using var hookedState = f.Hooked.NewState();
        using var identity = f.Hooked.Bind(new SteeringTensors(f.Hooked.SteeringShape!));
        var plain = f.Plain.Forward(plainState, Prompt, null);
        var hooked = f.Hooked.Forward(hookedState, Prompt, identity);
        for (var step = 0; step <= 20; step++)
        {
            Assert.True(Numerics.RelativeL2(hooked, plain) <= 1e-6, $"step {step}: relative L2 {Numerics.RelativeL2(hooked, plain):E2}");
            // On one provider both graphs run the same kernels on the same values: the hooks must vanish bit for bit.
            Assert.True(hooked.AsSpan().SequenceEqual(plain), $"step {step}: logits are close but not bit-identical");
            var rows = hooked.Length / Vocab;
            for (var r = 0; r < rows; r++)
                Assert.Equal(Numerics.ArgMax(plain.AsSpan(r * Vocab, Vocab)), Numerics.ArgMax(hooked.AsSpan(r * Vocab, Vocab)));
            var next = Numerics.ArgMax(plain.AsSpan((rows - 1) * Vocab, Vocab));
            plain = f.Plain.Forward(plainState, [next], null);
            hooked = f.Hooked.Forward(hookedState, [next], identity);
        }
    }

    public static TheoryData<string> InterventionCases() => new(Interventions.Keys);

    private static FeatureVector Feature(int seed, float threshold = 0f)
    {
        var rng = new Random(seed);
        var v = Numerics.RandomVector(rng, 64);
        var norm = MathF.Sqrt(v.Sum(x => x * x));
        return new FeatureVector(v.Select(x => x / norm).ToArray(), Numerics.RandomVector(rng, 64, 0.5f), 0.1f, threshold);
    }

    internal static readonly Dictionary<string, SteeringTerm[]> Interventions = new()
    {
        ["add at blocks.2.hook_resid_post"] = [new(new Site(2, SiteKind.ResidPost), SteeringOperation.Add, 4f, Feature(1))],
        ["rescale r=0 at blocks.2.hook_mlp_out"] = [new(new Site(2, SiteKind.MlpOut), SteeringOperation.Rescale, 0f, Feature(2))],
        ["rescale r=-2 at blocks.1.hook_resid_post"] = [new(new Site(1, SiteKind.ResidPost), SteeringOperation.Rescale, -2f, Feature(3))],
        ["clamp c=3 (JumpReLU 0.2) at blocks.3.hook_attn_out"] = [new(new Site(3, SiteKind.AttnOut), SteeringOperation.Clamp, 3f, Feature(4, threshold: 0.2f))],
        ["several sites and layers"] =
        [
            new(new Site(0, SiteKind.AttnOut), SteeringOperation.Add, 1.5f, Feature(5)),
            new(new Site(1, SiteKind.MlpOut), SteeringOperation.Rescale, -1f, Feature(6)),
            new(new Site(3, SiteKind.ResidPost), SteeringOperation.Clamp, 2f, Feature(7, threshold: 0.1f)),
            new(new Site(3, SiteKind.ResidPost), SteeringOperation.Rescale, 0f, Feature(8)),
            new(new Site(4, SiteKind.MlpOut), SteeringOperation.Add, -2f, Feature(9)),
        ],
    };

    [Theory]
    [MemberData(nameof(InterventionCases))]
    public void Steered_graph_matches_the_reference_forward_pass_over_prefill_and_16_decode_steps(string name)
    {
        var plan = new SteeringCompiler(f.Hooked.SteeringShape!).Compile(new SteeringSpec(Interventions[name]));
        var reference = new ReferenceTransformer(f.Checkpoint);
        var unsteered = new ReferenceTransformer(f.Checkpoint);
        using var state = f.Hooked.NewState();
        using var steering = f.Hooked.Bind(plan.Prompt);
        var graph = f.Hooked.Forward(state, Prompt, steering);
        var effect = 0.0;
        for (var pos = 0; pos < Prompt.Length; pos++)
        {
            var expected = reference.Forward(Prompt[pos], pos, plan.Prompt);
            var actual = graph.AsSpan(pos * Vocab, Vocab);
            Assert.True(Numerics.RelativeL2(actual, expected) <= 1e-4, $"{name}, prompt position {pos}: relative L2 {Numerics.RelativeL2(actual, expected):E2}");
            effect = Math.Max(effect, Numerics.RelativeL2(expected, unsteered.Forward(Prompt[pos], pos)));
        }
        var token = Numerics.ArgMax(graph.AsSpan((Prompt.Length - 1) * Vocab, Vocab));
        for (var step = 0; step < 16; step++)
        {
            var pos = Prompt.Length + step;
            var actual = f.Hooked.Forward(state, [token], steering);
            var expected = reference.Forward(token, pos, plan.Prompt);
            Assert.True(Numerics.RelativeL2(actual, expected) <= 1e-4, $"{name}, decode step {step}: relative L2 {Numerics.RelativeL2(actual, expected):E2}");
            effect = Math.Max(effect, Numerics.RelativeL2(expected, unsteered.Forward(token, pos)));
            token = Numerics.ArgMax(expected);
        }
        // The intervention must actually change the logits, or the comparison above proves nothing.
        Assert.True(effect > 1e-2, $"{name}: steering moved the logits by only {effect:E2}");
    }

    [Fact]
    public void A_term_scoped_to_generated_tokens_leaves_the_prompt_alone_and_changes_decode_logits()
    {
        var term = new SteeringTerm(new Site(2, SiteKind.ResidPost), SteeringOperation.Add, 4f, Feature(11), SteeringScope.GeneratedOnly);
        var plan = new SteeringCompiler(f.Hooked.SteeringShape!).Compile(new SteeringSpec([term]));
        using var steeredState = f.Hooked.NewState();
        using var plainState = f.Hooked.NewState();
        using var prompt = f.Hooked.Bind(plan.Prompt);
        using var generated = f.Hooked.Bind(plan.Generated);
        using var identity = f.Hooked.Bind(new SteeringTensors(f.Hooked.SteeringShape!));

        var steered = f.Hooked.Forward(steeredState, Prompt, prompt);
        var unsteered = f.Hooked.Forward(plainState, Prompt, identity);
        Assert.Equal(unsteered, steered);

        var next = Numerics.ArgMax(unsteered.AsSpan((Prompt.Length - 1) * Vocab, Vocab));
        for (var step = 0; step < 3; step++)
        {
            steered = f.Hooked.Forward(steeredState, [next], generated);
            unsteered = f.Hooked.Forward(plainState, [next], identity);
            Assert.True(Numerics.RelativeL2(steered, unsteered) > 1e-2, $"decode step {step}: steering did not reach the logits");
            next = Numerics.ArgMax(unsteered);
        }
    }
}
