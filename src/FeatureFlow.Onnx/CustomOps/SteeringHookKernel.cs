using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace FeatureFlow.Onnx.CustomOps;

/// <summary>
/// The CPU kernel of <see cref="SteeringHookOp"/>'s operators, as ONNX Runtime callbacks. Per batch row b and
/// token t, at a site s: pre_k = e_k·x + b_k, a_k = pre_k &gt; θ_k ? pre_k : 0, c_k = α_k·a_k + β_k,
/// delta = Σ_k c_k·v_k (summed from +0), and the hook writes (h + add) + delta with x = h; SteeringHookPairNorm's
/// second hook, at the residual site, reads x = h' + residual and writes (h' + add) + delta. These are the same
/// operations in the same order as the ONNX-operator hook (SteeringHook.Delta) up to the summation order inside the
/// two dot products. The norm operators then normalise that output plus the residual as ONNX Runtime's
/// SkipSimplifiedLayerNormalization does.
/// </summary>
/// <remarks>
/// A row whose α and β are all zero at a site gets delta = +0 without the feature terms: every c_k is then ±0
/// (for finite activations), so the full sum would be +0 as well, and the output keeps exactly the bits it would
/// have had. In particular all-zero steering gives h + 0 + 0, h's own bits, as the ONNX-operator hook does.
/// Nothing is allocated per call on the managed heap (the outputs come from ONNX Runtime's allocator).
/// </remarks>
internal static unsafe class SteeringHookKernel
{
    /// <summary>Feature slots up to this many keep their per-token coefficients on the stack.</summary>
    private const int StackSlots = 256;

    private static readonly byte* Name = NativeString(SteeringHookOp.OpType);
    private static readonly byte* NormName = NativeString(SteeringHookOp.NormOpType);
    private static readonly byte* PairNormName = NativeString(SteeringHookOp.PairNormOpType);
    private static readonly byte* EpsilonName = NativeString(SteeringHookOp.EpsilonAttribute);
    private static readonly byte* SiteName = NativeString(SteeringHookOp.SiteAttribute);
    private static readonly byte* ResidualSiteName = NativeString(SteeringHookOp.ResidualSiteAttribute);

    /// <summary>
    /// An operator's callbacks followed by which operator it is: ONNX Runtime passes every callback the pointer it was
    /// registered with, so the shared callbacks read the kind back from there.
    /// </summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct Operator
    {
        public OrtCustomOp Callbacks;
        public bool Pair;
        public bool Norm;
    }

    /// <summary>The operators: a hook, a hook with the norm after it, and a pair of hooks with the norm after them.
    /// </summary>
    public static IEnumerable<(bool Pair, bool Norm)> Operators => [(false, false), (false, true), (true, true)];

    /// <summary>What one node's kernel knows: its operator and attributes.</summary>
    private struct Kernel
    {
        public bool Pair;
        public bool Norm;
        public long Site;
        public long ResidualSite;
        public float Epsilon;

        public readonly string Describe() => Pair
            ? $"{OpType(Pair, Norm)} at sites {Site} and {ResidualSite}"
            : $"{OpType(Pair, Norm)} at site {Site}";
    }

    /// <summary>
    /// A native description of one of the <see cref="Operators"/> for a custom-op domain; never freed, as ONNX Runtime
    /// keeps pointing at it.
    /// </summary>
    public static OrtCustomOp* Describe(bool pair, bool norm)
    {
        var described = (Operator*)NativeMemory.AllocZeroed((nuint)sizeof(Operator));
        described->Pair = pair;
        described->Norm = norm;
        var op = &described->Callbacks;
        op->Version = OrtCustomOp.SupportedVersion;
        op->GetName = (nint)(delegate* unmanaged<Operator*, byte*>)&GetName;
        op->GetExecutionProviderType = (nint)(delegate* unmanaged<nint, byte*>)&GetExecutionProviderType;
        op->GetInputType = (nint)(delegate* unmanaged<nint, nuint, int>)&GetTensorType;
        op->GetInputTypeCount = (nint)(delegate* unmanaged<Operator*, nuint>)&GetInputCount;
        op->GetOutputType = (nint)(delegate* unmanaged<nint, nuint, int>)&GetTensorType;
        op->GetOutputTypeCount = (nint)(delegate* unmanaged<Operator*, nuint>)&GetOutputCount;
        op->KernelDestroy = (nint)(delegate* unmanaged<Kernel*, void>)&Destroy;
        op->GetInputCharacteristic = (nint)(delegate* unmanaged<nint, nuint, int>)&GetInputCharacteristic;
        op->GetOutputCharacteristic = (nint)(delegate* unmanaged<nint, nuint, int>)&GetOutputCharacteristic;
        op->GetInputMemoryType = (nint)(delegate* unmanaged<nint, nuint, int>)&GetMemoryType;
        op->CreateKernelV2 = (nint)(delegate* unmanaged<Operator*, nint, nint, Kernel**, nint>)&Create;
        op->KernelComputeV2 = (nint)(delegate* unmanaged<Kernel*, nint, nint>)&Compute;
        op->InferOutputShapeFn = (nint)(delegate* unmanaged<Operator*, nint, nint>)&InferShape;
        op->GetStartVersion = (nint)(delegate* unmanaged<nint, int>)&GetStartVersion;
        op->GetEndVersion = (nint)(delegate* unmanaged<nint, int>)&GetEndVersion;
        return op;
    }

    [UnmanagedCallersOnly]
    private static byte* GetName(Operator* op) => op->Norm ? op->Pair ? PairNormName : NormName : Name;

    [UnmanagedCallersOnly]
    private static byte* GetExecutionProviderType(nint op) => null;

    /// <summary>The domain's opset versions the operators belong to: every one.</summary>
    [UnmanagedCallersOnly]
    private static int GetStartVersion(nint op) => 1;

    [UnmanagedCallersOnly]
    private static int GetEndVersion(nint op) => int.MaxValue;

    /// <summary>
    /// Every output has h's type and shape. Outputs a node leaves out at the end of its list do not exist for ONNX
    /// Runtime, which refuses to type them: only the first output's refusal is an error.
    /// </summary>
    [UnmanagedCallersOnly]
    private static nint InferShape(Operator* op, nint context)
    {
        nint info;
        var status = OrtCApi.ShapeInferContextGetInputTypeShape(context, 0, &info);
        if (status != 0) return status;
        var outputs = op->Norm ? SteeringHookOp.NormOutputCount : 1;
        for (var i = 0; i < outputs; i++)
        {
            status = OrtCApi.ShapeInferContextSetOutputTypeShape(context, (nuint)i, info);
            if (status == 0) continue;
            if (i == 0) return status;
            OrtCApi.ReleaseStatus(status);
        }
        return 0;
    }

    [UnmanagedCallersOnly]
    private static int GetTensorType(nint op, nuint index) => OrtCApi.ElementFloat;

    [UnmanagedCallersOnly]
    private static nuint GetInputCount(Operator* op) =>
        (nuint)(op->Norm ? SteeringHookOp.NormInputCount : SteeringHookOp.InputCount);

    [UnmanagedCallersOnly]
    private static nuint GetOutputCount(Operator* op) => (nuint)(op->Norm ? SteeringHookOp.NormOutputCount : 1);

    [UnmanagedCallersOnly]
    private static int GetInputCharacteristic(nint op, nuint index) => OrtCustomOp.Required;

    /// <summary>Every output after the first (a norm operator's sum and hooked value) may be left out.</summary>
    [UnmanagedCallersOnly]
    private static int GetOutputCharacteristic(nint op, nuint index) =>
        index == 0 ? OrtCustomOp.Required : OrtCustomOp.Optional;

    [UnmanagedCallersOnly]
    private static int GetMemoryType(nint op, nuint index) => OrtCustomOp.DefaultMemory;

    [UnmanagedCallersOnly]
    private static nint Create(Operator* op, nint api, nint info, Kernel** kernel)
    {
        bool pair = op->Pair, norm = op->Norm;
        try
        {
            long site, residualSite = 0;
            var epsilon = 0f;
            var status = OrtCApi.KernelInfoGetAttributeInt64(info, SiteName, &site);
            if (status != 0) return Refuse(pair, norm, status, SteeringHookOp.SiteAttribute);
            if (pair && (status = OrtCApi.KernelInfoGetAttributeInt64(info, ResidualSiteName, &residualSite)) != 0)
                return Refuse(pair, norm, status, SteeringHookOp.ResidualSiteAttribute);
            if (norm && (status = OrtCApi.KernelInfoGetAttributeFloat(info, EpsilonName, &epsilon)) != 0)
                return Refuse(pair, norm, status, SteeringHookOp.EpsilonAttribute, "float");
            if (norm && !(epsilon >= 0f))
                return OrtCApi.CreateStatus(OrtCApi.OrtInvalidArgument,
                    $"{OpType(pair, norm)}: attribute {SteeringHookOp.EpsilonAttribute} must be ≥ 0; found {epsilon}");
            if (site < 0 || residualSite < 0)
                return OrtCApi.CreateStatus(OrtCApi.OrtInvalidArgument, pair
                    ? $"{OpType(pair, norm)}: attributes {SteeringHookOp.SiteAttribute} and "
                        + $"{SteeringHookOp.ResidualSiteAttribute} must be ≥ 0; found {site} and {residualSite}"
                    : $"{OpType(pair, norm)}: attribute {SteeringHookOp.SiteAttribute} must be ≥ 0; found {site}");
            var state = (Kernel*)NativeMemory.Alloc((nuint)sizeof(Kernel));
            *state = new Kernel
            {
                Pair = pair, Norm = norm, Site = site, ResidualSite = residualSite, Epsilon = epsilon,
            };
            *kernel = state;
            return 0;
        }
        catch (Exception e)
        {
            return OrtCApi.CreateStatus(OrtCApi.OrtFail, $"{OpType(pair, norm)}: {e.Message}");
        }
    }

    private static string OpType(bool pair, bool norm) =>
        norm ? pair ? SteeringHookOp.PairNormOpType : SteeringHookOp.NormOpType : SteeringHookOp.OpType;

    /// <summary>Replaces ONNX Runtime's own (released) status by one that names the missing attribute.</summary>
    private static nint Refuse(bool pair, bool norm, nint status, string attribute, string type = "int")
    {
        OrtCApi.ReleaseStatus(status);
        return OrtCApi.CreateStatus(OrtCApi.OrtInvalidArgument,
            $"{OpType(pair, norm)} needs the {type} attribute '{attribute}'");
    }

    [UnmanagedCallersOnly]
    private static void Destroy(Kernel* kernel) => NativeMemory.Free(kernel);

    [UnmanagedCallersOnly]
    private static nint Compute(Kernel* kernel, nint context)
    {
        try
        {
            return Run(*kernel, context);
        }
        catch (Exception e)
        {
            return OrtCApi.CreateStatus(OrtCApi.OrtFail, $"{kernel->Describe()}: {e.Message}");
        }
    }

    /// <summary>A float32 input's data and shape, both owned by ONNX Runtime for the duration of the call.</summary>
    private readonly struct Input(float* data, long* shape, int rank)
    {
        public readonly float* Data = data;
        public readonly long* Shape = shape;
        public readonly int Rank = rank;

        public long this[int axis] => Shape[axis];

        public string Describe() => "[" + string.Join(", ", new ReadOnlySpan<long>(Shape, Rank).ToArray()) + "]";
    }

    /// <summary>One batch row's steering at one site: pointers into the stacked inputs.</summary>
    private readonly struct SiteSteering
    {
        private readonly float* _shift, _encoder, _decoder, _bias, _threshold, _alpha, _beta;
        private readonly int _slots;

        /// <summary>How many feature terms the hook sums: 0 when every α and β is zero, else all slots.</summary>
        private readonly int _terms;

        public SiteSteering(in Input add, in Input encoder, in Input decoder, in Input coefficients, long b, long site)
        {
            long row = b * add[1] + site, d = add[2];
            _slots = (int)encoder[3];
            _shift = add.Data + row * d;
            _encoder = encoder.Data + row * d * _slots;
            _decoder = decoder.Data + row * _slots * d;
            var rows = coefficients.Data + row * SteeringHookOp.CoefficientRows * _slots;
            _bias = rows + SteeringHookOp.EncoderBiasRow * _slots;
            _threshold = rows + SteeringHookOp.ThresholdRow * _slots;
            _alpha = rows + SteeringHookOp.AlphaRow * _slots;
            _beta = rows + SteeringHookOp.BetaRow * _slots;
            _terms = IsZero(_alpha, _slots) && IsZero(_beta, _slots) ? 0 : _slots;
        }

        /// <summary>
        /// o = (x + add) + Σ_k c_k·v_k with c_k from the features of x (+ <paramref name="residual"/> when given,
        /// added channel by channel as a graph's Add would). <paramref name="o"/> may be <paramref name="x"/> itself.
        /// </summary>
        public void Apply(float* x, float* residual, int d, Span<float> scratch, float* o)
        {
            var c = scratch[.._terms];
            if (_terms > 0)
            {
                Encode(x, residual, _encoder, d, c);
                for (var k = 0; k < _terms; k++)
                {
                    var pre = c[k] + _bias[k];
                    var activation = pre > _threshold[k] ? pre : 0f;
                    c[k] = _alpha[k] * activation + _beta[k];
                }
            }
            Steer(x, _shift, _decoder, c, d, o);
        }
    }

    private static nint Run(Kernel kernel, nint context)
    {
        Input h, add, encoder, decoder, coefficients, residual = default, gamma = default;
        nint status;
        if ((status = Read(context, 0, out h)) != 0 || (status = Read(context, 1, out add)) != 0
            || (status = Read(context, 2, out encoder)) != 0 || (status = Read(context, 3, out decoder)) != 0
            || (status = Read(context, 4, out coefficients)) != 0
            || (kernel.Norm && ((status = Read(context, SteeringHookOp.ResidualInput, out residual)) != 0
                || (status = Read(context, SteeringHookOp.GammaInput, out gamma)) != 0)))
            return status;
        if (Validate(kernel, h, add, encoder, decoder, coefficients, residual, gamma) is { } problem)
            return OrtCApi.CreateStatus(OrtCApi.OrtInvalidArgument, $"{kernel.Describe()}: {problem}");

        // A hook's one output; a norm node's normalised value, sum (the next residual stream) and h' (the hooked site's
        // value), the last two null where the node leaves them out.
        float* o, sum = null, sublayer = null;
        if ((status = Output(context, 0, h, out o)) != 0
            || (kernel.Norm && ((status = Output(context, 1, h, out sum)) != 0
                || (status = Output(context, 2, h, out sublayer)) != 0)))
            return status;

        long batch = h[0], tokens = h[1];
        int d = (int)h[2], slots = (int)encoder[3];
        var c = slots <= StackSlots ? stackalloc float[slots] : new float[slots];
        for (long b = 0; b < batch; b++)
        {
            var site = new SiteSteering(add, encoder, decoder, coefficients, b, kernel.Site);
            var stream = kernel.Pair
                ? new SiteSteering(add, encoder, decoder, coefficients, b, kernel.ResidualSite)
                : default;
            for (long t = 0; t < tokens; t++)
            {
                var at = (b * tokens + t) * d;
                var x = h.Data + at;
                if (!kernel.Norm)
                {
                    site.Apply(x, null, d, c, o + at);
                    continue;
                }
                // The norm's input: in the sum's place or, without a sum output, the normalised one's, to be
                // overwritten in place; h' goes to its own output when the node has it, else there too.
                var input = (sum is null ? o : sum) + at;
                var steered = sublayer is null ? input : sublayer + at;
                site.Apply(x, null, d, c, steered);
                if (kernel.Pair) stream.Apply(steered, residual.Data + at, d, c, input);
                else if (steered != input) Unsafe.CopyBlock(input, steered, (uint)(d * sizeof(float)));
                SkipRmsNorm(input, residual.Data + at, gamma.Data, d, kernel.Epsilon,
                    sum is null ? null : sum + at, o + at);
            }
        }
        return 0;
    }

    /// <summary>
    /// ONNX Runtime's SkipSimplifiedLayerNormalization CPU kernel, operation for operation so that the bits agree:
    /// val = input + skip per channel (written to <paramref name="sum"/> when given), a float sum of val² in channel
    /// order, rms = sqrt(Σ / d + ε), then val / rms · γ. <paramref name="input"/> may be <paramref name="sum"/> or
    /// <paramref name="normed"/> itself (each channel is read before it is written).
    /// </summary>
    private static void SkipRmsNorm(float* input, float* skip, float* gamma, int d, float epsilon, float* sum,
        float* normed)
    {
        var squares = 0f;
        for (var i = 0; i < d; i++)
        {
            var value = input[i] + skip[i];
            if (sum is not null) sum[i] = value;
            normed[i] = value;
            squares += value * value;
        }
        var rms = MathF.Sqrt(squares / d + epsilon);
        for (var i = 0; i < d; i++) normed[i] = normed[i] / rms * gamma[i];
    }

    private static nint Read(nint context, nuint index, out Input input)
    {
        input = default;
        nint value;
        var status = OrtCApi.KernelContextGetInput(context, index, &value);
        if (status != 0) return status;
        int type;
        long* shape;
        nuint rank;
        if ((status = OrtCApi.GetTensorTypeAndShape(value, &type, &shape, &rank)) != 0) return status;
        float* data;
        if ((status = OrtCApi.GetTensorMutableData(value, &data)) != 0) return status;
        input = new Input(data, shape, (int)rank);
        return 0;
    }

    /// <summary>Output <paramref name="index"/>, shaped like <paramref name="like"/>; null data when the node has none.
    /// </summary>
    private static nint Output(nint context, nuint index, Input like, out float* data)
    {
        data = null;
        nint value;
        var status = OrtCApi.KernelContextGetOutput(context, index, like.Shape, (nuint)like.Rank, &value);
        if (status != 0 || value == 0) return status;
        float* written;
        status = OrtCApi.GetTensorMutableData(value, &written);
        data = written;
        return status;
    }

    /// <summary>Null when the inputs fit together, else what is wrong, naming the expected and found shapes.</summary>
    private static string? Validate(Kernel kernel, Input h, Input add, Input encoder, Input decoder,
        Input coefficients, Input residual, Input gamma)
    {
        if (h.Rank != 3) return $"h must be [batch, tokens, d]; found {h.Describe()}";
        if (add.Rank != 3 || add[0] != h[0] || add[2] != h[2])
            return $"steering.add must be [batch {h[0]}, sites, d {h[2]}] (h is {h.Describe()}); found {add.Describe()}";
        long batch = h[0], sites = add[1], d = h[2];
        if (kernel.Site >= sites)
            return $"the site index is {kernel.Site} but steering.add has {sites} sites ({add.Describe()})";
        if (kernel.Pair && kernel.ResidualSite >= sites)
            return $"the residual site index is {kernel.ResidualSite} but steering.add has {sites} sites "
                + $"({add.Describe()})";
        if (encoder.Rank != 4 || encoder[0] != batch || encoder[1] != sites || encoder[2] != d)
            return $"steering.encoder must be [{batch}, {sites}, {d}, slots]; found {encoder.Describe()}";
        var slots = encoder[3];
        if (decoder.Rank != 4 || decoder[0] != batch || decoder[1] != sites || decoder[2] != slots || decoder[3] != d)
            return $"steering.decoder must be [{batch}, {sites}, {slots}, {d}]; found {decoder.Describe()}";
        if (coefficients.Rank != 4 || coefficients[0] != batch || coefficients[1] != sites
            || coefficients[2] != SteeringHookOp.CoefficientRows || coefficients[3] != slots)
            return $"steering.coefficients must be [{batch}, {sites}, {SteeringHookOp.CoefficientRows}, {slots}]; "
                + $"found {coefficients.Describe()}";
        if (kernel.Norm
            && (residual.Rank != 3 || residual[0] != h[0] || residual[1] != h[1] || residual[2] != d))
            return $"residual must have h's shape {h.Describe()}; found {residual.Describe()}";
        if (kernel.Norm && (gamma.Rank != 1 || gamma[0] != d))
            return $"gamma must be [d {d}]; found {gamma.Describe()}";
        return null;
    }

    private static bool IsZero(float* values, int count)
    {
        for (var k = 0; k < count; k++)
            if (values[k] != 0f) return false;
        return true;
    }

    /// <summary>
    /// pre[k] = Σ_i x_i·e[i, k] for e stored [d, K] (row i holds every slot's weight for channel i), where
    /// x_i = x[i] + residual[i] (one float sum, as a graph's Add forms it) or x[i] alone when residual is null.
    /// </summary>
    private static void Encode(float* x, float* residual, float* e, int d, Span<float> pre)
    {
        int slots = pre.Length, width = Vector<float>.Count, k0 = 0;
        for (; k0 + width <= slots; k0 += width)
        {
            // Four partial sums: one would make every step wait on the previous fused multiply-add's latency.
            Vector<float> s0 = Vector<float>.Zero, s1 = s0, s2 = s0, s3 = s0;
            var i = 0;
            for (; i + 4 <= d; i += 4)
            {
                s0 = Term(x, residual, e, slots, k0, i, s0);
                s1 = Term(x, residual, e, slots, k0, i + 1, s1);
                s2 = Term(x, residual, e, slots, k0, i + 2, s2);
                s3 = Term(x, residual, e, slots, k0, i + 3, s3);
            }
            for (; i < d; i++) s0 = Term(x, residual, e, slots, k0, i, s0);
            ((s0 + s1) + (s2 + s3)).CopyTo(pre[k0..]);
        }
        for (; k0 < slots; k0++)
        {
            var sum = 0f;
            for (var i = 0; i < d; i++) sum += Channel(x, residual, i) * e[(long)i * slots + k0];
            pre[k0] = sum;
        }
    }

    /// <summary>sum + x_i·e[i, k0..k0 + width), fused.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector<float> Term(float* x, float* residual, float* e, int slots, int k0, int i, Vector<float> sum) =>
        Vector.FusedMultiplyAdd(new Vector<float>(Channel(x, residual, i)),
            Unsafe.ReadUnaligned<Vector<float>>(e + (long)i * slots + k0), sum);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float Channel(float* x, float* residual, int i) => residual is null ? x[i] : x[i] + residual[i];

    /// <summary>
    /// o = (x + shift) + Σ_k c[k]·v[k, :], the sum starting from +0, one pass over the d channels; each channel is read
    /// before it is written, so o may be x.
    /// </summary>
    private static void Steer(float* x, float* shift, float* v, ReadOnlySpan<float> c, int d, float* o)
    {
        int width = Vector<float>.Count, i = 0;
        for (; i + width <= d; i += width)
        {
            var delta = Vector<float>.Zero;
            for (var k = 0; k < c.Length; k++)
                delta += Unsafe.ReadUnaligned<Vector<float>>(v + (long)k * d + i) * c[k];
            var shifted = Unsafe.ReadUnaligned<Vector<float>>(x + i) + Unsafe.ReadUnaligned<Vector<float>>(shift + i);
            Unsafe.WriteUnaligned(o + i, shifted + delta);
        }
        for (; i < d; i++)
        {
            var delta = 0f;
            for (var k = 0; k < c.Length; k++) delta += v[(long)k * d + i] * c[k];
            o[i] = (x[i] + shift[i]) + delta;
        }
    }

    private static byte* NativeString(string text)
    {
        var bytes = System.Text.Encoding.UTF8.GetBytes(text);
        var native = (byte*)NativeMemory.Alloc((nuint)bytes.Length + 1);
        bytes.CopyTo(new Span<byte>(native, bytes.Length));
        native[bytes.Length] = 0;
        return native;
    }
}
