using System.Runtime.InteropServices;
using FeatureFlow.Onnx.Ir;
using Google.Protobuf;
using DataType = FeatureFlow.Onnx.Ir.TensorProto.Types.DataType;

namespace FeatureFlow.Models.Tests.Hooking;

/// <summary>
/// A float32 graph turned float16 the way fp16 exports are: every float initializer, graph input and output becomes
/// float16 (raw IEEE half bytes); integer tensors and attributes stay as they are.
/// </summary>
internal static class Float16Conversion
{
    public static ModelProto Convert(ModelProto model)
    {
        var half = model.Clone();
        foreach (var tensor in half.Graph.Initializer.Where(t => t.DataType == (int)DataType.Float))
        {
            var values = tensor.RawData.IsEmpty ? tensor.FloatData.ToArray() : MemoryMarshal.Cast<byte, float>(tensor.RawData.Span).ToArray();
            var halves = values.Select(v => (Half)v).ToArray();
            tensor.FloatData.Clear();
            tensor.RawData = ByteString.CopyFrom(MemoryMarshal.AsBytes(halves.AsSpan()));
            tensor.DataType = (int)DataType.Float16;
        }
        foreach (var value in half.Graph.Input.Concat(half.Graph.Output).Where(v => v.Type.TensorType.ElemType == (int)DataType.Float))
            value.Type.TensorType.ElemType = (int)DataType.Float16;
        return half;
    }
}
