using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace FeatureFlow.Onnx.CustomOps;

/// <summary>
/// The CPU kernel of <see cref="SteeringHookOp"/>, as ONNX Runtime callbacks. Per batch row b and token t, at the
/// node's site s: pre_k = e_k·h + b_k, a_k = pre_k &gt; θ_k ? pre_k : 0, c_k = α_k·a_k + β_k,
/// delta = Σ_k c_k·v_k (summed from +0), and the output is (h + add) + delta, or add + delta for an increment node,
/// the same operations in the same order as the ONNX-operator hook (SteeringHook.Delta) up to the summation order
/// inside the two dot products.
/// </summary>
/// <remarks>
/// A row whose α and β are all zero at this site gets delta = +0 without the feature terms: every c_k is then ±0
/// (for finite activations), so the full sum would be +0 as well, and the output keeps exactly the bits it would
/// have had. In particular all-zero steering gives h + 0 + 0, h's own bits, as the ONNX-operator hook does.
/// Nothing is allocated per call on the managed heap (the output tensor comes from ONNX Runtime's allocator).
/// </remarks>
internal static unsafe class SteeringHookKernel
{
    /// <summary>Feature slots up to this many keep their per-token coefficients on the stack.</summary>
    private const int StackSlots = 256;

    private static readonly byte* Name = NativeString(SteeringHookOp.OpType);
    private static readonly byte* SiteName = NativeString(SteeringHookOp.SiteAttribute);
    private static readonly byte* IncrementName = NativeString(SteeringHookOp.IncrementAttribute);

    /// <summary>What one node's kernel knows: its attributes.</summary>
    private struct Kernel
    {
        public long Site;
        public bool Increment;
    }

    public static void Describe(OrtCustomOp* op)
    {
        op->Version = OrtCustomOp.SupportedVersion;
        op->GetName = (nint)(delegate* unmanaged<nint, byte*>)&GetName;
        op->GetExecutionProviderType = (nint)(delegate* unmanaged<nint, byte*>)&GetExecutionProviderType;
        op->GetInputType = (nint)(delegate* unmanaged<nint, nuint, int>)&GetTensorType;
        op->GetInputTypeCount = (nint)(delegate* unmanaged<nint, nuint>)&GetInputCount;
        op->GetOutputType = (nint)(delegate* unmanaged<nint, nuint, int>)&GetTensorType;
        op->GetOutputTypeCount = (nint)(delegate* unmanaged<nint, nuint>)&GetOutputCount;
        op->KernelDestroy = (nint)(delegate* unmanaged<Kernel*, void>)&Destroy;
        op->GetInputCharacteristic = (nint)(delegate* unmanaged<nint, nuint, int>)&GetCharacteristic;
        op->GetOutputCharacteristic = (nint)(delegate* unmanaged<nint, nuint, int>)&GetCharacteristic;
        op->GetInputMemoryType = (nint)(delegate* unmanaged<nint, nuint, int>)&GetMemoryType;
        op->CreateKernelV2 = (nint)(delegate* unmanaged<nint, nint, nint, Kernel**, nint>)&Create;
        op->KernelComputeV2 = (nint)(delegate* unmanaged<Kernel*, nint, nint>)&Compute;
    }

    [UnmanagedCallersOnly]
    private static byte* GetName(nint op) => Name;

    [UnmanagedCallersOnly]
    private static byte* GetExecutionProviderType(nint op) => null;

    [UnmanagedCallersOnly]
    private static int GetTensorType(nint op, nuint index) => OrtCApi.ElementFloat;

    [UnmanagedCallersOnly]
    private static nuint GetInputCount(nint op) => SteeringHookOp.InputCount;

    [UnmanagedCallersOnly]
    private static nuint GetOutputCount(nint op) => 1;

    [UnmanagedCallersOnly]
    private static int GetCharacteristic(nint op, nuint index) => OrtCustomOp.Required;

    [UnmanagedCallersOnly]
    private static int GetMemoryType(nint op, nuint index) => OrtCustomOp.DefaultMemory;

    [UnmanagedCallersOnly]
    private static nint Create(nint op, nint api, nint info, Kernel** kernel)
    {
        try
        {
            long site, increment;
            var status = OrtCApi.KernelInfoGetAttributeInt64(info, SiteName, &site);
            if (status != 0) return Refuse(status, $"needs the int attribute '{SteeringHookOp.SiteAttribute}'");
            status = OrtCApi.KernelInfoGetAttributeInt64(info, IncrementName, &increment);
            if (status != 0) return Refuse(status, $"needs the int attribute '{SteeringHookOp.IncrementAttribute}'");
            if (site < 0 || increment is not (0 or 1))
                return OrtCApi.CreateStatus(OrtCApi.OrtInvalidArgument, $"{SteeringHookOp.OpType}: attributes "
                    + $"{SteeringHookOp.SiteAttribute} must be ≥ 0 and {SteeringHookOp.IncrementAttribute} 0 or 1; "
                    + $"found {site} and {increment}");
            var state = (Kernel*)NativeMemory.Alloc((nuint)sizeof(Kernel));
            *state = new Kernel { Site = site, Increment = increment == 1 };
            *kernel = state;
            return 0;
        }
        catch (Exception e)
        {
            return OrtCApi.CreateStatus(OrtCApi.OrtFail, $"{SteeringHookOp.OpType}: {e.Message}");
        }
    }

    /// <summary>Replaces ONNX Runtime's own (released) status by one that says what the operator needs.</summary>
    private static nint Refuse(nint status, string need)
    {
        OrtCApi.ReleaseStatus(status);
        return OrtCApi.CreateStatus(OrtCApi.OrtInvalidArgument, $"{SteeringHookOp.OpType} {need}");
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
            return OrtCApi.CreateStatus(OrtCApi.OrtFail, $"{SteeringHookOp.OpType}: {e.Message}");
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

    private static nint Run(Kernel kernel, nint context)
    {
        Input h, add, encoder, decoder, coefficients;
        nint status;
        if ((status = Read(context, 0, out h)) != 0 || (status = Read(context, 1, out add)) != 0
            || (status = Read(context, 2, out encoder)) != 0 || (status = Read(context, 3, out decoder)) != 0
            || (status = Read(context, 4, out coefficients)) != 0)
            return status;
        if (Validate(kernel, h, add, encoder, decoder, coefficients) is { } problem)
            return OrtCApi.CreateStatus(OrtCApi.OrtInvalidArgument,
                $"{SteeringHookOp.OpType} at site {kernel.Site}: {problem}");

        nint output;
        if ((status = OrtCApi.KernelContextGetOutput(context, 0, h.Shape, 3, &output)) != 0) return status;
        float* o;
        if ((status = OrtCApi.GetTensorMutableData(output, &o)) != 0) return status;

        long batch = h[0], tokens = h[1], d = h[2], sites = add[1];
        int slots = (int)encoder[3];
        var c = slots <= StackSlots ? stackalloc float[slots] : new float[slots];
        for (long b = 0; b < batch; b++)
        {
            var row = b * sites + kernel.Site;
            var shift = add.Data + row * d;
            var e = encoder.Data + row * d * slots;
            var v = decoder.Data + row * slots * d;
            var rows = coefficients.Data + row * SteeringHookOp.CoefficientRows * slots;
            var bias = new ReadOnlySpan<float>(rows + SteeringHookOp.EncoderBiasRow * slots, slots);
            var threshold = new ReadOnlySpan<float>(rows + SteeringHookOp.ThresholdRow * slots, slots);
            var alpha = new ReadOnlySpan<float>(rows + SteeringHookOp.AlphaRow * slots, slots);
            var beta = new ReadOnlySpan<float>(rows + SteeringHookOp.BetaRow * slots, slots);
            var terms = IsZero(alpha) && IsZero(beta) ? 0 : slots;
            for (long t = 0; t < tokens; t++)
            {
                var x = h.Data + (b * tokens + t) * d;
                if (terms > 0)
                {
                    Encode(x, e, (int)d, c);
                    for (var k = 0; k < slots; k++)
                    {
                        var pre = c[k] + bias[k];
                        var activation = pre > threshold[k] ? pre : 0f;
                        c[k] = alpha[k] * activation + beta[k];
                    }
                }
                Steer(kernel.Increment ? null : x, shift, v, c[..terms], (int)d, o + (b * tokens + t) * d);
            }
        }
        return 0;
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

    /// <summary>Null when the inputs fit together, else what is wrong, naming the expected and found shapes.</summary>
    private static string? Validate(Kernel kernel, Input h, Input add, Input encoder, Input decoder,
        Input coefficients)
    {
        if (h.Rank != 3) return $"h must be [batch, tokens, d]; found {h.Describe()}";
        if (add.Rank != 3 || add[0] != h[0] || add[2] != h[2])
            return $"steering.add must be [batch {h[0]}, sites, d {h[2]}] (h is {h.Describe()}); found {add.Describe()}";
        long batch = h[0], sites = add[1], d = h[2];
        if (kernel.Site >= sites)
            return $"the site index is {kernel.Site} but steering.add has {sites} sites ({add.Describe()})";
        if (encoder.Rank != 4 || encoder[0] != batch || encoder[1] != sites || encoder[2] != d)
            return $"steering.encoder must be [{batch}, {sites}, {d}, slots]; found {encoder.Describe()}";
        var slots = encoder[3];
        if (decoder.Rank != 4 || decoder[0] != batch || decoder[1] != sites || decoder[2] != slots || decoder[3] != d)
            return $"steering.decoder must be [{batch}, {sites}, {slots}, {d}]; found {decoder.Describe()}";
        if (coefficients.Rank != 4 || coefficients[0] != batch || coefficients[1] != sites
            || coefficients[2] != SteeringHookOp.CoefficientRows || coefficients[3] != slots)
            return $"steering.coefficients must be [{batch}, {sites}, {SteeringHookOp.CoefficientRows}, {slots}]; "
                + $"found {coefficients.Describe()}";
        return null;
    }

    private static bool IsZero(ReadOnlySpan<float> values)
    {
        foreach (var value in values)
            if (value != 0f) return false;
        return true;
    }

    /// <summary>pre[k] = Σ_i x[i]·e[i, k] for e stored [d, K] (row i holds every slot's weight for channel i).</summary>
    private static void Encode(float* x, float* e, int d, Span<float> pre)
    {
        int slots = pre.Length, width = Vector<float>.Count, k0 = 0;
        for (; k0 + width <= slots; k0 += width)
        {
            var sum = Vector<float>.Zero;
            for (var i = 0; i < d; i++)
                sum += new Vector<float>(x[i]) * Unsafe.ReadUnaligned<Vector<float>>(e + (long)i * slots + k0);
            sum.CopyTo(pre[k0..]);
        }
        for (; k0 < slots; k0++)
        {
            var sum = 0f;
            for (var i = 0; i < d; i++) sum += x[i] * e[(long)i * slots + k0];
            pre[k0] = sum;
        }
    }

    /// <summary>
    /// o = (x + shift) + Σ_k c[k]·v[k, :] (or shift + Σ when <paramref name="x"/> is null), the sum starting from +0,
    /// one pass over the d channels.
    /// </summary>
    private static void Steer(float* x, float* shift, float* v, ReadOnlySpan<float> c, int d, float* o)
    {
        int width = Vector<float>.Count, i = 0;
        for (; i + width <= d; i += width)
        {
            var delta = Vector<float>.Zero;
            for (var k = 0; k < c.Length; k++)
                delta += Unsafe.ReadUnaligned<Vector<float>>(v + (long)k * d + i) * c[k];
            var shifted = Unsafe.ReadUnaligned<Vector<float>>(shift + i);
            if (x is not null) shifted = Unsafe.ReadUnaligned<Vector<float>>(x + i) + shifted;
            Unsafe.WriteUnaligned(o + i, shifted + delta);
        }
        for (; i < d; i++)
        {
            var delta = 0f;
            for (var k = 0; k < c.Length; k++) delta += v[(long)k * d + i] * c[k];
            o[i] = (x is null ? shift[i] : x[i] + shift[i]) + delta;
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
