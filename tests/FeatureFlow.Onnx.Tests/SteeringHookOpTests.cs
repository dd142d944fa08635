using FeatureFlow.Onnx.CustomOps;
using FeatureFlow.Onnx.Ir;
using Microsoft.ML.OnnxRuntime;
using DataType = FeatureFlow.Onnx.Ir.TensorProto.Types.DataType;

namespace FeatureFlow.Onnx.Tests;

/// <summary>
/// One <c>ai.featureflow.SteeringHook</c> node in a tiny graph, run by ONNX Runtime through the C# kernel, against
/// the hook's formula written out here in plain loops.
/// </summary>
public class SteeringHookOpTests
{
    private sealed record Steering(int Batch, int Sites, int D, int Slots)
    {
        public float[] Add { get; init; } = new float[Batch * Sites * D];
        public float[] Encoder { get; init; } = new float[Batch * Sites * D * Slots];
        public float[] Decoder { get; init; } = new float[Batch * Sites * Slots * D];
        public float[] Coefficients { get; init; } = new float[Batch * Sites * SteeringHookOp.CoefficientRows * Slots];

        public float Coefficient(int b, int s, int row, int k) =>
            Coefficients[((b * Sites + s) * SteeringHookOp.CoefficientRows + row) * Slots + k];

        /// <summary>Random steering at every site; thresholds around the activations' scale, so some slots fire.</summary>
        public static Steering Random(Random rng, int batch, int sites, int d, int slots) => new(batch, sites, d, slots)
        {
            Add = Numerics.RandomVector(rng, batch * sites * d),
            Encoder = Numerics.RandomVector(rng, batch * sites * d * slots),
            Decoder = Numerics.RandomVector(rng, batch * sites * slots * d),
            Coefficients = Numerics.RandomVector(rng, batch * sites * SteeringHookOp.CoefficientRows * slots),
        };
    }

    private static byte[] HookGraph(int sites, int d, int slots, long site, long increment,
        bool withAttributes = true)
    {
        var g = new GraphBuilder("hook");
        var h = g.Input("h", DataType.Float, "batch", "tokens", d);
        string[] inputs =
        [
            h,
            g.Input("add", DataType.Float, "batch", sites, d),
            g.Input("encoder", DataType.Float, "batch", sites, "d", "slots"),
            g.Input("decoder", DataType.Float, "batch", sites, "slots", "d"),
            g.Input("coefficients", DataType.Float, "batch", sites, "rows", "slots"),
        ];
        AttributeProto[] attributes = withAttributes
            ? [Attr.Int(SteeringHookOp.SiteAttribute, site), Attr.Int(SteeringHookOp.IncrementAttribute, increment)]
            : [];
        var y = g.DomainNode(SteeringHookOp.Domain, SteeringHookOp.OpType, inputs, ["y"], attributes)[0];
        g.Output(y, "y", DataType.Float, "batch", "tokens", d);
        return OnnxModelFile.Serialize(g.Build(new OnnxModelOptions
        {
            DomainOpsets = [new(SteeringHookOp.Domain, SteeringHookOp.DomainVersion)],
        }));
    }

    private static InferenceSession Session(byte[] model)
    {
        using var options = new SessionOptions();
        FeatureFlowOps.Register(options);
        return new InferenceSession(model, options);
    }

    private static float[] Run(InferenceSession session, float[] h, int tokens, Steering s,
        long[]? encoderShape = null)
    {
        using var hValue = OrtValue.CreateTensorValueFromMemory(h, [s.Batch, tokens, s.D]);
        using var add = OrtValue.CreateTensorValueFromMemory(s.Add, [s.Batch, s.Sites, s.D]);
        using var encoder = OrtValue.CreateTensorValueFromMemory(s.Encoder,
            encoderShape ?? [s.Batch, s.Sites, s.D, s.Slots]);
        using var decoder = OrtValue.CreateTensorValueFromMemory(s.Decoder, [s.Batch, s.Sites, s.Slots, s.D]);
        using var coefficients = OrtValue.CreateTensorValueFromMemory(s.Coefficients,
            [s.Batch, s.Sites, SteeringHookOp.CoefficientRows, s.Slots]);
        using var runOptions = new RunOptions();
        using var outputs = session.Run(runOptions, ["h", "add", "encoder", "decoder", "coefficients"],
            [hValue, add, encoder, decoder, coefficients], ["y"]);
        return outputs[0].GetTensorDataAsSpan<float>().ToArray();
    }

    /// <summary>The hook from its definition: (h + add) + Σ_k (α_k·JumpReLU_θk(e_k·h + b_k) + β_k)·v_k.</summary>
    private static float[] Expected(float[] h, int tokens, Steering s, int site, bool increment) =>
        Expected(h, tokens, s, site, increment, out _);

    /// <param name="fired">How many (row, token, slot) activations passed their threshold.</param>
    private static float[] Expected(float[] h, int tokens, Steering s, int site, bool increment, out int fired)
    {
        fired = 0;
        var y = new float[h.Length];
        for (var b = 0; b < s.Batch; b++)
            for (var t = 0; t < tokens; t++)
            {
                var delta = new double[s.D];
                for (var k = 0; k < s.Slots; k++)
                {
                    double pre = s.Coefficient(b, site, SteeringHookOp.EncoderBiasRow, k);
                    for (var i = 0; i < s.D; i++)
                        pre += h[(b * tokens + t) * s.D + i] * s.Encoder[((b * s.Sites + site) * s.D + i) * s.Slots + k];
                    var fires = pre > s.Coefficient(b, site, SteeringHookOp.ThresholdRow, k);
                    if (fires) fired++;
                    var activation = fires ? pre : 0;
                    var c = s.Coefficient(b, site, SteeringHookOp.AlphaRow, k) * activation
                        + s.Coefficient(b, site, SteeringHookOp.BetaRow, k);
                    for (var i = 0; i < s.D; i++)
                        delta[i] += c * s.Decoder[((b * s.Sites + site) * s.Slots + k) * s.D + i];
                }
                for (var i = 0; i < s.D; i++)
                {
                    var x = (b * tokens + t) * s.D + i;
                    y[x] = (float)((increment ? 0 : h[x]) + s.Add[(b * s.Sites + site) * s.D + i] + delta[i]);
                }
            }
        return y;
    }

    [Theory]
    [InlineData(16, 8, 0)] // whole vectors of channels and slots
    [InlineData(13, 5, 0)] // a tail of channels and of slots
    [InlineData(64, 8, 1)]
    [InlineData(7, 11, 1)]
    public void Node_computes_the_hook_formula(int d, int slots, int increment)
    {
        var rng = new Random(d * 100 + slots);
        const int batch = 3, sites = 4, site = 2, tokens = 2;
        var steering = Steering.Random(rng, batch, sites, d, slots);
        var h = Numerics.RandomVector(rng, batch * tokens * d, 2f);
        using var session = Session(HookGraph(sites, d, slots, site, increment));

        var y = Run(session, h, tokens, steering);

        var expected = Expected(h, tokens, steering, site, increment == 1, out var fired);
        Assert.True(Numerics.RelativeL2(y, expected) < 1e-6, $"relative L2 {Numerics.RelativeL2(y, expected)}");
        // Both branches of the JumpReLU were taken.
        Assert.InRange(fired, 1, batch * tokens * slots - 1);
    }

    [Fact]
    public void All_zero_steering_gives_h_bit_for_bit_and_an_increment_of_zero()
    {
        var rng = new Random(5);
        const int batch = 2, sites = 3, d = 24, slots = 8, tokens = 3;
        var zero = new Steering(batch, sites, d, slots);
        var h = Numerics.RandomVector(rng, batch * tokens * d, 3f);
        using var hook = Session(HookGraph(sites, d, slots, 1, 0));
        using var increment = Session(HookGraph(sites, d, slots, 1, 1));

        Assert.Equal(h, Run(hook, h, tokens, zero));
        Assert.All(Run(increment, h, tokens, zero), v => Assert.Equal(0, BitConverter.SingleToInt32Bits(v)));
    }

    [Fact]
    public void A_row_without_feature_terms_is_shifted_by_add_alone_while_its_neighbour_is_steered()
    {
        var rng = new Random(6);
        const int batch = 2, sites = 2, d = 16, slots = 8, tokens = 1, site = 0;
        var steering = Steering.Random(rng, batch, sites, d, slots);
        // Row 0: α = β = 0 at every slot (encoder, decoder and bias left random).
        for (var k = 0; k < slots; k++)
            foreach (var row in new[] { SteeringHookOp.AlphaRow, SteeringHookOp.BetaRow })
                steering.Coefficients[(site * SteeringHookOp.CoefficientRows + row) * slots + k] = 0f;
        var h = Numerics.RandomVector(rng, batch * tokens * d);
        using var session = Session(HookGraph(sites, d, slots, site, 0));

        var y = Run(session, h, tokens, steering);

        Assert.Equal(Enumerable.Range(0, d).Select(i => h[i] + steering.Add[site * d + i]), y[..d]);
        var expected = Expected(h, tokens, steering, site, increment: false);
        Assert.True(Numerics.RelativeL2(y[d..], expected[d..]) < 1e-6);
        var row1AddOnly = Enumerable.Range(0, d).Select(i => h[d + i] + steering.Add[(1 * sites + site) * d + i]);
        Assert.True(Numerics.RelativeL2(y[d..], row1AddOnly.ToArray()) > 1e-3);
    }

    [Fact]
    public void Mismatched_steering_shapes_are_an_onnx_runtime_error_naming_both_shapes()
    {
        var rng = new Random(7);
        const int batch = 1, sites = 2, d = 8, slots = 4;
        var steering = Steering.Random(rng, batch, sites, d, slots);
        using var session = Session(HookGraph(sites, d, slots, 1, 0));

        // The encoder's values read as [1, 2, 4, 8]: d and slots swapped.
        var e = Assert.Throws<OnnxRuntimeException>(() =>
            Run(session, new float[d], 1, steering, encoderShape: [batch, sites, slots, d]));

        Assert.Contains("steering.encoder must be [1, 2, 8, slots]; found [1, 2, 4, 8]", e.Message);
    }

    [Fact]
    public void A_site_beyond_the_stacked_inputs_is_an_error_not_a_wild_read()
    {
        const int sites = 2, d = 8, slots = 4;
        using var session = Session(HookGraph(sites, d, slots, site: 2, increment: 0));

        var e = Assert.Throws<OnnxRuntimeException>(() =>
            Run(session, new float[d], 1, new Steering(1, sites, d, slots)));

        Assert.Contains("the site index is 2 but steering.add has 2 sites", e.Message);
    }

    [Fact]
    public void A_node_without_its_attributes_is_refused_when_the_session_is_created()
    {
        var e = Assert.ThrowsAny<OnnxRuntimeException>(() => Session(HookGraph(2, 8, 4, 0, 0, withAttributes: false)));

        Assert.Contains($"needs the int attribute '{SteeringHookOp.SiteAttribute}'", e.Message);
    }

    [Fact]
    public void Without_registration_the_domain_is_unknown_to_onnx_runtime()
    {
        var e = Assert.ThrowsAny<OnnxRuntimeException>(() => new InferenceSession(HookGraph(2, 8, 4, 0, 0)));

        Assert.Contains(SteeringHookOp.Domain, e.Message);
    }
}
