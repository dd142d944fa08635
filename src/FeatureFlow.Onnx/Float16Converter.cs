using System.Runtime.InteropServices;
using FeatureFlow.Onnx.Ir;
using Google.Protobuf;
using DataType = FeatureFlow.Onnx.Ir.TensorProto.Types.DataType;
using DataLocation = FeatureFlow.Onnx.Ir.TensorProto.Types.DataLocation;

namespace FeatureFlow.Onnx;

/// <summary>
/// A float32 graph made float16 inside and kept float32 at its boundary: every float initializer and constant is
/// stored as IEEE half, casts to float become casts to half, and each float input or output passes through one Cast,
/// so callers (the engine, GenAI) feed and read float32 as before while weights take half the bytes and a runtime with
/// float16 kernels (CUDA) computes in half precision. ONNX Runtime's CPU provider casts around the operators it has no
/// float16 kernel for. Only sound for graphs whose math tolerates half precision: norms that accumulate in float32
/// (SimplifiedLayerNormalization's stash_type 1) and rotary angles precomputed into cos/sin tables — the fused-operator
/// graphs, not plain-operator ones (those compute position × frequency and Σx² in the graph).
/// </summary>
public static class Float16Converter
{
    private const string Suffix = "/float16";

    public static ModelProto Convert(ModelProto source)
    {
        var model = source.Clone();
        var graph = model.Graph;
        foreach (var tensor in graph.Initializer.Where(t => t.DataType == (int)DataType.Float)) ToHalf(tensor);
        foreach (var node in graph.Node)
            foreach (var attribute in node.Attribute)
            {
                if (node.OpType == "Cast" && attribute.Name == "to" && attribute.I == (long)DataType.Float)
                    attribute.I = (long)DataType.Float16;
                if (attribute.T is { DataType: (int)DataType.Float } constant) ToHalf(constant);
            }

        var front = new List<NodeProto>();
        foreach (var input in graph.Input.Where(IsFloat))
        {
            var inner = input.Name + Suffix;
            foreach (var node in graph.Node)
                for (var i = 0; i < node.Input.Count; i++)
                    if (node.Input[i] == input.Name) node.Input[i] = inner;
            front.Add(Cast(input.Name, inner, DataType.Float16));
        }
        var back = new List<NodeProto>();
        foreach (var output in graph.Output.Where(IsFloat))
        {
            var inner = output.Name + Suffix;
            foreach (var node in graph.Node)
            {
                for (var i = 0; i < node.Input.Count; i++)
                    if (node.Input[i] == output.Name) node.Input[i] = inner;
                for (var i = 0; i < node.Output.Count; i++)
                    if (node.Output[i] == output.Name) node.Output[i] = inner;
            }
            back.Add(Cast(inner, output.Name, DataType.Float));
        }
        var nodes = front.Concat(graph.Node).Concat(back).ToArray();
        graph.Node.Clear();
        graph.Node.AddRange(nodes);
        // Inner value types changed; ONNX Runtime infers them again.
        graph.ValueInfo.Clear();
        return model;
    }

    private static bool IsFloat(ValueInfoProto value) => value.Type?.TensorType?.ElemType == (int)DataType.Float;

    private static NodeProto Cast(string input, string output, DataType to)
    {
        var node = new NodeProto { OpType = "Cast", Name = $"{output}/cast" };
        node.Input.Add(input);
        node.Output.Add(output);
        node.Attribute.Add(new AttributeProto
        {
            Name = "to", I = (long)to, Type = AttributeProto.Types.AttributeType.Int,
        });
        return node;
    }

    private static void ToHalf(TensorProto tensor)
    {
        if (tensor.DataLocation == DataLocation.External)
            throw new InvalidOperationException($"initializer '{tensor.Name}' is stored externally: convert the graph to "
                + "float16 before its weights are written out");
        var values = tensor.RawData.IsEmpty
            ? tensor.FloatData.ToArray()
            : MemoryMarshal.Cast<byte, float>(tensor.RawData.Span).ToArray();
        var halves = new Half[values.Length];
        for (var i = 0; i < values.Length; i++) halves[i] = (Half)values[i];
        tensor.FloatData.Clear();
        tensor.RawData = ByteString.CopyFrom(MemoryMarshal.AsBytes(halves.AsSpan()));
        tensor.DataType = (int)DataType.Float16;
    }
}
