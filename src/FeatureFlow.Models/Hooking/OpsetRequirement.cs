using FeatureFlow.Onnx.Ir;

namespace FeatureFlow.Models.Hooking;

/// <summary>
/// The hooks need ai.onnx opset 13 or later (Squeeze/Unsqueeze take their axes as inputs) and a split fused norm needs
/// 17 (LayerNormalization). An older graph is raised to 17 only when every default-domain operator it uses means the
/// same at 17 as at its own opset; otherwise it is refused, naming the operator, rather than silently changing it.
/// </summary>
public static class OpsetRequirement
{
    public const long Minimum = 17;
    private const long IrVersionOfOpset17 = 8;
    private const long OldestRaisable = 10;

    /// <summary>Operators whose definitions from opset 10 to 17 agree on every node valid at the older opset.</summary>
    private static readonly HashSet<string> StableSince10 = new(StringComparer.Ordinal)
    {
        "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Neg", "Tanh", "Erf", "Relu", "Sigmoid", "MatMul", "Gemm",
        "Cast", "Gather", "Reshape", "Transpose", "Concat", "Shape", "Identity", "Where", "Equal", "Less", "Greater",
        "And", "Or", "Not", "Range", "Expand", "ConstantOfShape", "Constant", "Slice",
    };

    /// <summary>Raises the default-domain opset to <see cref="Minimum"/> if needed; returns the opset it had when raised.</summary>
    public static long? Ensure(ModelProto model)
    {
        var import = model.OpsetImport.FirstOrDefault(o => o.Domain is "" or "ai.onnx")
            ?? throw new InvalidDataException("the graph imports no ai.onnx opset");
        var current = import.Version;
        if (current >= Minimum) return null;
        if (current < OldestRaisable)
            throw new InvalidDataException($"the graph imports ai.onnx opset {current}; hooking needs {Minimum} and "
                + $"raises only from {OldestRaisable} on");
        var changed = model.Graph.Node.FirstOrDefault(n => n.Domain is "" or "ai.onnx" && !StableSince10.Contains(n.OpType));
        if (changed is not null)
            throw new InvalidDataException($"the graph imports ai.onnx opset {current}; hooking needs {Minimum}, and its "
                + $"{ResidualStreamFamily.Describe(changed)} may mean something else there (expected only operators "
                + $"unchanged since opset 10)");
        import.Version = Minimum;
        model.IrVersion = Math.Max(model.IrVersion, IrVersionOfOpset17);
        return current;
    }

    /// <summary>The default-domain opset the model imports.</summary>
    public static long Of(ModelProto model) => model.OpsetImport.First(o => o.Domain is "" or "ai.onnx").Version;
}
