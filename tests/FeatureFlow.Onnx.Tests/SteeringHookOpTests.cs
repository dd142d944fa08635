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

    /// <summary>The hook's inputs in its order: h, then the four stacked steering inputs.</summary>
    private static string[] HookInputs(GraphBuilder g, int sites, int d) =>
    [
        g.Input("h", DataType.Float, "batch", "tokens", d),
        g.Input("add", DataType.Float, "batch", sites, d),
        g.Input("encoder", DataType.Float, "batch", sites, "d", "slots"),
        g.Input("decoder", DataType.Float, "batch", sites, "slots", "d"),
        g.Input("coefficients", DataType.Float, "batch", sites, "rows", "slots"),
    ];

    private static byte[] HookGraph(int sites, int d, int slots, long site, bool withAttributes = true)
    {
        var g = new GraphBuilder("hook");
        var inputs = HookInputs(g, sites, d);
        AttributeProto[] attributes = withAttributes ? [Attr.Int(SteeringHookOp.SiteAttribute, site)] : [];
        g.Output(g.DomainNode(SteeringHookOp.Domain, SteeringHookOp.OpType, inputs, ["y"], attributes)[0], "y",
            DataType.Float, "batch", "tokens", d);
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
        long[]? encoderShape = null) => Run(session, h, tokens, s, null, ["y"], encoderShape)[0];

    /// <summary>Runs the graph with <paramref name="residual"/> and <paramref name="gamma"/> as its sixth and seventh
    /// inputs when given; returns the outputs named.</summary>
    private static float[][] Run(InferenceSession session, float[] h, int tokens, Steering s, float[]? residual,
        string[] outputNames, long[]? encoderShape = null, long[]? residualShape = null, float[]? gamma = null)
    {
        long[] shape = [s.Batch, tokens, s.D];
        List<OrtValue> values =
        [
            OrtValue.CreateTensorValueFromMemory(h, shape),
            OrtValue.CreateTensorValueFromMemory(s.Add, [s.Batch, s.Sites, s.D]),
            OrtValue.CreateTensorValueFromMemory(s.Encoder, encoderShape ?? [s.Batch, s.Sites, s.D, s.Slots]),
            OrtValue.CreateTensorValueFromMemory(s.Decoder, [s.Batch, s.Sites, s.Slots, s.D]),
            OrtValue.CreateTensorValueFromMemory(s.Coefficients,
                [s.Batch, s.Sites, SteeringHookOp.CoefficientRows, s.Slots]),
        ];
        List<string> names = ["h", "add", "encoder", "decoder", "coefficients"];
        if (residual is not null)
        {
            values.Add(OrtValue.CreateTensorValueFromMemory(residual, residualShape ?? shape));
            names.Add("residual");
        }
        if (gamma is not null)
        {
            values.Add(OrtValue.CreateTensorValueFromMemory(gamma, [gamma.Length]));
            names.Add("gamma");
        }
        try
        {
            using var runOptions = new RunOptions();
            using var outputs = session.Run(runOptions, names, values, outputNames);
            return outputs.Select(o => o.GetTensorDataAsSpan<float>().ToArray()).ToArray();
        }
        finally
        {
            foreach (var value in values) value.Dispose();
        }
    }

    /// <summary>
    /// (kept + add) + Σ_k (α_k·JumpReLU_θk(e_k·x + b_k) + β_k)·v_k at <paramref name="site"/>; the feature terms
    /// summed in double.
    /// </summary>
    /// <param name="fired">How many (row, token, slot) activations passed their threshold.</param>
    private static float[] Hook(float[] x, float[] kept, int tokens, Steering s, int site, out int fired)
    {
        fired = 0;
        var y = new float[x.Length];
        for (var b = 0; b < s.Batch; b++)
            for (var t = 0; t < tokens; t++)
            {
                var delta = new double[s.D];
                for (var k = 0; k < s.Slots; k++)
                {
                    double pre = s.Coefficient(b, site, SteeringHookOp.EncoderBiasRow, k);
                    for (var i = 0; i < s.D; i++)
                        pre += x[(b * tokens + t) * s.D + i] * s.Encoder[((b * s.Sites + site) * s.D + i) * s.Slots + k];
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
                    var at = (b * tokens + t) * s.D + i;
                    y[at] = (float)(kept[at] + s.Add[(b * s.Sites + site) * s.D + i] + delta[i]);
                }
            }
        return y;
    }

    [Theory]
    [InlineData(16, 8)] // whole vectors of channels and slots
    [InlineData(13, 5)] // a tail of channels and of slots
    [InlineData(64, 8)]
    [InlineData(7, 11)]
    public void Node_computes_the_hook_formula(int d, int slots)
    {
        var rng = new Random(d * 100 + slots);
        const int batch = 3, sites = 4, site = 2, tokens = 2;
        var steering = Steering.Random(rng, batch, sites, d, slots);
        var h = Numerics.RandomVector(rng, batch * tokens * d, 2f);
        using var session = Session(HookGraph(sites, d, slots, site));

        var y = Run(session, h, tokens, steering);

        var expected = Hook(h, h, tokens, steering, site, out var fired);
        Assert.True(Numerics.RelativeL2(y, expected) < 1e-6, $"relative L2 {Numerics.RelativeL2(y, expected)}");
        // Both branches of the JumpReLU were taken.
        Assert.InRange(fired, 1, batch * tokens * slots - 1);
    }

    [Fact]
    public void All_zero_steering_gives_h_bit_for_bit()
    {
        var rng = new Random(5);
        const int batch = 2, sites = 3, d = 24, slots = 8, tokens = 3;
        var zero = new Steering(batch, sites, d, slots);
        var h = Numerics.RandomVector(rng, batch * tokens * d, 3f);
        using var hook = Session(HookGraph(sites, d, slots, 1));

        Assert.Equal(h.Select(BitConverter.SingleToInt32Bits),
            Run(hook, h, tokens, zero).Select(BitConverter.SingleToInt32Bits));
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
        using var session = Session(HookGraph(sites, d, slots, site));

        var y = Run(session, h, tokens, steering);

        Assert.Equal(Enumerable.Range(0, d).Select(i => h[i] + steering.Add[site * d + i]), y[..d]);
        var expected = Hook(h, h, tokens, steering, site, out _);
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
        using var session = Session(HookGraph(sites, d, slots, 1));

        // The encoder's values read as [1, 2, 4, 8]: d and slots swapped.
        var e = Assert.Throws<OnnxRuntimeException>(() =>
            Run(session, new float[d], 1, steering, encoderShape: [batch, sites, slots, d]));

        Assert.Contains("steering.encoder must be [1, 2, 8, slots]; found [1, 2, 4, 8]", e.Message);
    }

    [Fact]
    public void A_site_beyond_the_stacked_inputs_is_an_error_not_a_wild_read()
    {
        const int sites = 2, d = 8, slots = 4;
        using var session = Session(HookGraph(sites, d, slots, site: 2));

        var e = Assert.Throws<OnnxRuntimeException>(() =>
            Run(session, new float[d], 1, new Steering(1, sites, d, slots)));

        Assert.Contains("the site index is 2 but steering.add has 2 sites", e.Message);
    }

    [Fact]
    public void A_node_without_its_attributes_is_refused_when_the_session_is_created()
    {
        var e = Assert.ThrowsAny<OnnxRuntimeException>(() => Session(HookGraph(2, 8, 4, 0, withAttributes: false)));

        Assert.Contains($"needs the int attribute '{SteeringHookOp.SiteAttribute}'", e.Message);
    }

    /// <summary>
    /// SteeringHookPairNorm from its definition: h' = the hook at the sublayer site on h, r = h' + residual (a float
    /// sum), y = (h' + add_r) + the feature terms of r at the residual site, then the norm over y + residual. With or
    /// without the optional outputs (the sum and h'), the normalised value is the same bits.
    /// </summary>
    [Theory]
    [InlineData(16, 8)] // whole vectors of channels and slots
    [InlineData(13, 5)] // a tail of channels and of slots
    [InlineData(64, 8)]
    public void Pair_norm_node_computes_the_sublayer_hook_then_the_residual_stream_hook_then_the_norm(int d, int slots)
    {
        var rng = new Random(d * 10 + slots);
        const int batch = 3, sites = 4, site = 1, residualSite = 2, tokens = 2;
        var steering = Steering.Random(rng, batch, sites, d, slots);
        var h = Numerics.RandomVector(rng, batch * tokens * d, 2f);
        var residual = Numerics.RandomVector(rng, batch * tokens * d, 2f);
        var gamma = Numerics.RandomVector(rng, d);
        using var all = Session(NormGraph(pair: true, fused: true, sites, d, withSum: true, withHooked: true));
        using var alone = Session(NormGraph(pair: true, fused: true, sites, d, withSum: false, withHooked: false));

        var outputs = Run(all, h, tokens, steering, residual, ["normed", "sum", "hooked"], gamma: gamma);
        var normed = Run(alone, h, tokens, steering, residual, ["normed"], gamma: gamma)[0];

        var hooked = Hook(h, h, tokens, steering, site, out var firedAtSite);
        var stream = hooked.Select((v, i) => v + residual[i]).ToArray();
        var y = Hook(stream, hooked, tokens, steering, residualSite, out var firedAtResidual);
        var sum = y.Select((v, i) => v + residual[i]).ToArray();
        Assert.True(Numerics.RelativeL2(outputs[2], hooked) < 1e-6, $"h': {Numerics.RelativeL2(outputs[2], hooked):E2}");
        Assert.True(Numerics.RelativeL2(outputs[1], sum) < 1e-6, $"sum: {Numerics.RelativeL2(outputs[1], sum):E2}");
        var expected = RmsNorm(sum, gamma, d);
        Assert.True(Numerics.RelativeL2(outputs[0], expected) < 1e-5,
            $"normed: {Numerics.RelativeL2(outputs[0], expected):E2}");
        Assert.Equal(outputs[0].Select(BitConverter.SingleToInt32Bits), normed.Select(BitConverter.SingleToInt32Bits));
        // Both branches of the JumpReLU were taken at both sites.
        Assert.InRange(firedAtSite, 1, batch * tokens * slots - 1);
        Assert.InRange(firedAtResidual, 1, batch * tokens * slots - 1);
        // The residual stream's hook did read residual: without it the result differs.
        var withoutResidual = Hook(hooked, hooked, tokens, steering, residualSite, out _);
        Assert.True(Numerics.RelativeL2(outputs[1], withoutResidual.Select((v, i) => v + residual[i]).ToArray()) > 1e-3);
    }

    /// <summary>
    /// With all-zero steering a pair norm node's h' is h's own bits and its sum is h + residual, the sum ONNX Runtime's
    /// norm in the graph without hooks forms.
    /// </summary>
    [Fact]
    public void Pair_norm_node_with_all_zero_steering_gives_h_and_its_sum_bit_for_bit()
    {
        var rng = new Random(8);
        const int batch = 2, sites = 4, d = 24, slots = 8, tokens = 3;
        var h = Numerics.RandomVector(rng, batch * tokens * d, 3f);
        var residual = Numerics.RandomVector(rng, batch * tokens * d, 3f);
        using var session = Session(NormGraph(pair: true, fused: true, sites, d, withSum: true, withHooked: true));

        var outputs = Run(session, h, tokens, new Steering(batch, sites, d, slots), residual, ["sum", "hooked"],
            gamma: Numerics.RandomVector(rng, d));

        Assert.Equal(h.Select((v, i) => BitConverter.SingleToInt32Bits(v + residual[i])),
            outputs[0].Select(BitConverter.SingleToInt32Bits));
        Assert.Equal(h.Select(BitConverter.SingleToInt32Bits), outputs[1].Select(BitConverter.SingleToInt32Bits));
    }

    [Fact]
    public void A_pair_norm_node_s_residual_of_another_shape_is_an_error_naming_both_shapes()
    {
        var rng = new Random(9);
        const int sites = 2, d = 8, slots = 4;
        using var session = Session(NormGraph(pair: true, fused: true, sites, d, withSum: false, withHooked: false,
            site: 0, residualSite: 1));

        var e = Assert.Throws<OnnxRuntimeException>(() => Run(session, new float[2 * d], 2,
            Steering.Random(rng, 1, sites, d, slots), new float[2 * d], ["normed"], residualShape: [2, 1, d],
            gamma: new float[d]));

        Assert.Contains($"{SteeringHookOp.PairNormOpType} at sites 0 and 1: residual must have h's shape [1, 2, 8]; "
            + "found [2, 1, 8]", e.Message);
    }

    [Fact]
    public void A_pair_norm_node_s_residual_site_beyond_the_stacked_inputs_is_an_error()
    {
        const int sites = 2, d = 8, slots = 4;
        using var session = Session(NormGraph(pair: true, fused: true, sites, d, withSum: false, withHooked: false,
            site: 0, residualSite: 2));

        var e = Assert.Throws<OnnxRuntimeException>(() => Run(session, new float[d], 1,
            new Steering(1, sites, d, slots), new float[d], ["normed"], gamma: new float[d]));

        Assert.Contains("the residual site index is 2 but steering.add has 2 sites", e.Message);
    }

    [Fact]
    public void A_pair_norm_node_without_its_residual_site_is_refused_when_the_session_is_created()
    {
        var e = Assert.ThrowsAny<OnnxRuntimeException>(() => Session(NormGraph(pair: true, fused: true, 2, 8,
            withSum: false, withHooked: false, site: 0, residualSite: null)));

        Assert.Contains($"{SteeringHookOp.PairNormOpType} needs the int attribute "
            + $"'{SteeringHookOp.ResidualSiteAttribute}'", e.Message);
    }

    [Fact]
    public void Without_registration_the_domain_is_unknown_to_onnx_runtime()
    {
        var e = Assert.ThrowsAny<OnnxRuntimeException>(() => new InferenceSession(HookGraph(2, 8, 4, 0)));

        Assert.Contains(SteeringHookOp.Domain, e.Message);
    }

    /// <summary>
    /// Steering inputs, h, residual and gamma, then either the norm operator (<paramref name="fused"/>; the pair one
    /// with <paramref name="pair"/>, its residual site attribute left out when null) or, as the reference, a SteeringHook
    /// node at <paramref name="site"/> followed by ONNX Runtime's own SkipSimplifiedLayerNormalization; graph outputs
    /// "normed" and, when the node writes them, "sum" and "hooked".
    /// </summary>
    private static byte[] NormGraph(bool pair, bool fused, int sites, int d, bool withSum, bool withHooked,
        long site = 1, long? residualSite = 2)
    {
        const float epsilon = 1e-5f;
        var g = new GraphBuilder("hook_norm");
        string[] steering = [.. HookInputs(g, sites, d), g.Input("residual", DataType.Float, "batch", "tokens", d)];
        var gamma = g.Input("gamma", DataType.Float, "gamma_length"); // symbolic: the kernel checks it
        List<AttributeProto> attributes = [Attr.Int(SteeringHookOp.SiteAttribute, site)];
        string[] outputs = ["normed", withSum ? "sum" : "", withHooked ? "hooked" : ""];
        if (fused)
        {
            if (pair && residualSite is { } r) attributes.Add(Attr.Int(SteeringHookOp.ResidualSiteAttribute, r));
            g.DomainNode(SteeringHookOp.Domain, pair ? SteeringHookOp.PairNormOpType : SteeringHookOp.NormOpType,
                [.. steering, gamma], outputs, [.. attributes, Attr.Float(SteeringHookOp.EpsilonAttribute, epsilon)]);
        }
        else
        {
            var hooked = withHooked ? "hooked" : "input";
            g.DomainNode(SteeringHookOp.Domain, SteeringHookOp.OpType, steering[..5], [hooked], [.. attributes]);
            g.DomainNode("com.microsoft", "SkipSimplifiedLayerNormalization", [hooked, "residual", gamma],
                [outputs[0], "", "", outputs[1]], Attr.Float("epsilon", epsilon));
        }
        foreach (var output in outputs.Where(o => o.Length > 0))
            g.Output(output, output, DataType.Float, "batch", "tokens", d);
        return OnnxModelFile.Serialize(g.Build(new OnnxModelOptions
        {
            DomainOpsets = [new(SteeringHookOp.Domain, SteeringHookOp.DomainVersion), new("com.microsoft", 1)],
        }));
    }

    [Theory]
    [InlineData(false, 64, true, true)]
    [InlineData(false, 13, false, false)]
    [InlineData(true, 64, true, true)]
    [InlineData(true, 13, true, false)]
    [InlineData(true, 64, false, true)]
    [InlineData(true, 16, false, false)]
    public void Norm_node_gives_the_bits_of_its_hook_node_then_onnx_runtimes_skip_norm(bool pair, int d, bool withSum,
        bool withHooked)
    {
        const int batch = 2, tokens = 3, sites = 4, slots = 8;
        var rng = new Random(d + (pair ? 100 : 0));
        var s = Steering.Random(rng, batch, sites, d, slots);
        void Unsteer(int b, int site)
        {
            Array.Clear(s.Add, (b * sites + site) * d, d);
            foreach (var row in new[] { SteeringHookOp.AlphaRow, SteeringHookOp.BetaRow })
                Array.Clear(s.Coefficients, ((b * sites + site) * SteeringHookOp.CoefficientRows + row) * slots, slots);
        }
        // Row 1 steers at neither site (α = β = 0, add = 0): its output must be ONNX Runtime's norm over h + residual.
        // A pair node's residual site is unsteered in every row, so the reference, a SteeringHook node at its first
        // site then ONNX Runtime's norm, computes what it must; its second hook is SteeringHookPairNorm's formula test.
        Unsteer(1, 1);
        for (var b = 0; b < batch; b++) Unsteer(b, 2);
        var h = Numerics.RandomVector(rng, batch * tokens * d);
        var residual = Numerics.RandomVector(rng, batch * tokens * d);
        var gamma = Numerics.RandomVector(rng, d);
        string[] names = ["normed", .. withSum ? new[] { "sum" } : [], .. withHooked ? new[] { "hooked" } : []];
        float[][] Outputs(bool fused)
        {
            using var session = Session(NormGraph(pair, fused, sites, d, withSum, withHooked));
            return Run(session, h, tokens, s, residual, names, gamma: gamma);
        }
        var reference = Outputs(fused: false);
        var fused = Outputs(fused: true);
        for (var i = 0; i < names.Length; i++)
            Assert.True(reference[i].Select(BitConverter.SingleToInt32Bits)
                .SequenceEqual(fused[i].Select(BitConverter.SingleToInt32Bits)), $"{names[i]} differs");
        // Row 0 is steered: its output is not the norm of h + residual.
        var unsteered = RmsNorm(h.Select((v, i) => v + residual[i]).ToArray(), gamma, d);
        Assert.NotEqual(reference[0].AsSpan(0, tokens * d).ToArray(), unsteered[..(tokens * d)]);
    }

    /// <summary>RMSNorm(x)·γ per row of d channels, in double (ε 1e-5, as the graphs here use).</summary>
    private static float[] RmsNorm(float[] x, float[] gamma, int d)
    {
        var y = new float[x.Length];
        for (var r = 0; r < x.Length / d; r++)
        {
            var squares = 0.0;
            for (var i = 0; i < d; i++) squares += (double)x[r * d + i] * x[r * d + i];
            var rms = Math.Sqrt(squares / d + 1e-5);
            for (var i = 0; i < d; i++) y[r * d + i] = (float)(x[r * d + i] / rms * gamma[i]);
        }
        return y;
    }

    [Fact]
    public void A_norm_node_with_a_gamma_of_the_wrong_length_fails_its_run_naming_gamma()
    {
        const int d = 8, tokens = 2;
        var rng = new Random(5);
        var s = Steering.Random(rng, 1, 4, d, 4);
        using var session = Session(NormGraph(pair: true, fused: true, sites: 4, d, withSum: true, withHooked: false));
        var e = Assert.ThrowsAny<OnnxRuntimeException>(() => Run(session, Numerics.RandomVector(rng, tokens * d), tokens,
            s, Numerics.RandomVector(rng, tokens * d), ["normed"], gamma: new float[d - 1]));
        Assert.Contains("gamma must be [d 8]", e.Message);
        Assert.Contains("[7]", e.Message);
    }
}
