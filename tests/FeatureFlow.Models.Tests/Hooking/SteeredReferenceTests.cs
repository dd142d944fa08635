using FeatureFlow.Steering;
using Row = FeatureFlow.Models.Export.GraphNames.CoefficientRow;

namespace FeatureFlow.Models.Tests.Hooking;

/// <summary>
/// Steering a hooked third-party graph does what the formula says: the logits match a plain C# GPT-2 forward pass
/// (<see cref="Gpt2Reference"/>, reading the weights from that graph's own initializers) with the same intervention.
/// </summary>
[Collection(HookedFixturesCollection.Name)]
public class SteeredReferenceTests(HookedFixtures fixtures)
{
    private static readonly int[][] Prompt = [[5, 17, 3, 9], [40, 2, 11, 8]];
    /// <summary>One token per row: the torch export builds its causal mask [T, T], valid for a prompt or for one new token.</summary>
    private static readonly int[][] Continuation = [[23], [1]];

    public static TheoryData<string, SiteKind> SiteKinds()
    {
        var data = new TheoryData<string, SiteKind>();
        foreach (var family in new[] { "torch", "genai" })
            foreach (var kind in Enum.GetValues<SiteKind>()) data.Add(family, kind);
        return data;
    }

    [Theory]
    [MemberData(nameof(SiteKinds))]
    public void An_additive_term_at_a_mid_layer_site_changes_the_logits(string family, SiteKind kind)
    {
        var model = fixtures[family];
        var site = new Site(model.Architecture.Layers / 2, kind);
        var steering = new SteeringTensors(model.SteeringShape);
        // Not a constant vector: every later LayerNorm would subtract it away.
        Numerics.RandomVector(new Random(7), model.Architecture.DModel, 0.5f).CopyTo(steering.AddAt(site));
        using var runner = model.Hooked();
        var unsteered = runner.Step(Prompt[0]);
        using var steeredRunner = model.Hooked();
        var steered = steeredRunner.Step(Prompt[0], [steering]);
        Assert.True(Numerics.RelativeL2(steered, unsteered) > 1e-3, $"{family} {site}: steering left the logits as they were");
    }

    public static TheoryData<string, SiteKind, bool> Interventions()
    {
        var data = new TheoryData<string, SiteKind, bool>();
        foreach (var family in new[] { "torch", "genai" })
            foreach (var kind in Enum.GetValues<SiteKind>())
                foreach (var slotTerm in new[] { false, true }) data.Add(family, kind, slotTerm);
        return data;
    }

    /// <summary>Two rows, row 0 steered and row 1 not, over a 4-token prompt and a next token run with that past.</summary>
    [Theory]
    [MemberData(nameof(Interventions))]
    public void Steered_logits_equal_the_plain_gpt2_reference_with_the_same_intervention(string family, SiteKind kind, bool slotTerm)
    {
        var model = fixtures[family];
        var (architecture, weights) = family == "torch"
            ? OnnxGpt2Weights.FromTorchExport(model.SourceGraph, model.Architecture.Heads)
            : OnnxGpt2Weights.FromFusedExport(model.SourceGraph);
        var site = new Site(model.Architecture.Layers / 2, kind);
        var steering = Intervention(model, site, slotTerm);
        var rows = new[] { steering, new SteeringTensors(model.SteeringShape) };
        using var runner = model.Hooked(batch: 2);
        var references = rows.Select(_ => new Gpt2Reference(architecture, weights)).ToArray();
        var vocab = model.Architecture.VocabSize;
        var position = 0;
        foreach (var step in new[] { Prompt, Continuation })
        {
            var logits = runner.Step(step.SelectMany(r => r).ToArray(), rows);
            var count = step[0].Length;
            for (var b = 0; b < 2; b++)
                for (var t = 0; t < count; t++)
                {
                    var expected = references[b].Forward(step[b][t], rows[b]); // at position + t
                    var actual = logits.AsSpan((b * count + t) * vocab, vocab);
                    var error = Numerics.RelativeL2(actual, expected);
                    Assert.True(error <= 1e-4, $"{family} {site} slot={slotTerm} row {b} position {position + t}: relative L2 {error}");
                }
            position += count;
        }
    }

    /// <summary>
    /// An additive direction, or a rescale/clamp slot: a_k = JumpReLU_θ(e·h + b), h += (α·a_k + β)·v, with a threshold
    /// low enough that most tokens fire, so both sides of the jump are exercised across positions.
    /// </summary>
    private static SteeringTensors Intervention(HookedModel model, Site site, bool slotTerm)
    {
        var rng = new Random(1234 + site.Index);
        var d = model.Architecture.DModel;
        var s = new SteeringTensors(model.SteeringShape);
        if (!slotTerm)
        {
            Numerics.RandomVector(rng, d, 0.8f).CopyTo(s.AddAt(site));
            return s;
        }
        s.SetEncoderRow(site, 1, Numerics.RandomVector(rng, d, 1f));
        Numerics.RandomVector(rng, d, 0.6f).CopyTo(s.DecoderAt(site, 1));
        s.Coefficient(site, Row.EncoderBias, 1) = 0.05f;
        s.Coefficient(site, Row.Threshold, 1) = -0.1f;
        s.Coefficient(site, Row.Alpha, 1) = -1.5f;
        s.Coefficient(site, Row.Beta, 1) = 0.4f;
        return s;
    }
}
