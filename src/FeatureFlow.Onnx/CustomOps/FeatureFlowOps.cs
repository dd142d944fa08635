using System.Runtime.InteropServices;
using FeatureFlow.Onnx.Ir;
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
        _ = DomainKnown.Value;
        OrtCApi.AddCustomOpDomain(options.DangerousGetHandle(), Domain);
        GC.KeepAlive(options);
    }

    /// <summary>
    /// One session with the domain, created before any caller's: the first session that brings a custom domain adds
    /// it to ONNX's process-wide domain-to-version map, checking first and adding after without a lock, so two
    /// sessions created at once on different threads could both add it, and the second fails ("the domain is already
    /// exist"). Every later session finds it there.
    /// </summary>
    private static readonly Lazy<bool> DomainKnown = new(() =>
    {
        var g = new GraphBuilder("featureflow_domain_check");
        var inputs = Enumerable.Range(0, SteeringHookOp.InputCount)
            .Select(i => g.Input($"input{i}", TensorProto.Types.DataType.Float, 1, 1, 1)).ToArray();
        g.Output(g.DomainOp(SteeringHookOp.Domain, SteeringHookOp.OpType, inputs,
            Attr.Int(SteeringHookOp.SiteAttribute, 0)),
            "output", TensorProto.Types.DataType.Float, 1, 1, 1);
        var model = OnnxModelFile.Serialize(g.Build(new OnnxModelOptions
        {
            DomainOpsets = [new(SteeringHookOp.Domain, SteeringHookOp.DomainVersion)],
        }));
        using var options = new SessionOptions();
        OrtCApi.AddCustomOpDomain(options.DangerousGetHandle(), Domain);
        using var session = new InferenceSession(model, options);
        return true;
    }, LazyThreadSafetyMode.ExecutionAndPublication);

    private static nint CreateDomain()
    {
        var domain = OrtCApi.CreateCustomOpDomain(SteeringHookOp.Domain);
        foreach (var (pair, norm) in SteeringHookKernel.Operators)
            OrtCApi.CustomOpDomainAdd(domain, SteeringHookKernel.Describe(pair, norm));
        return domain;
    }
}
