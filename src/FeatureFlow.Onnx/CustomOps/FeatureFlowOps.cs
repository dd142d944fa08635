using System.Runtime.InteropServices;
using Microsoft.ML.OnnxRuntime;

namespace FeatureFlow.Onnx.CustomOps;

/// <summary>
/// Makes FeatureFlow's custom operators (the <see cref="SteeringHookOp.Domain"/> domain) available to sessions.
/// </summary>
public static unsafe class FeatureFlowOps
{
    /// <summary>
    /// The domain with its operators, built once per process in native memory and never freed: ONNX Runtime keeps
    /// pointers to it in every session that was given it, for as long as those live.
    /// </summary>
    private static readonly nint Domain = CreateDomain();

    /// <summary>
    /// Adds the <see cref="SteeringHookOp.Domain"/> operators to <paramref name="options"/>, so sessions created with
    /// them can run graphs that use those operators (and any other graph as before). Cheap; call once per options.
    /// </summary>
    public static void Register(SessionOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        OrtCApi.AddCustomOpDomain(options.DangerousGetHandle(), Domain);
        GC.KeepAlive(options);
    }

    private static nint CreateDomain()
    {
        var domain = OrtCApi.CreateCustomOpDomain(SteeringHookOp.Domain);
        OrtCApi.CustomOpDomainAdd(domain, SteeringHookKernel.Describe(pair: false));
        OrtCApi.CustomOpDomainAdd(domain, SteeringHookKernel.Describe(pair: true));
        return domain;
    }
}
