using FeatureFlow.Onnx.Ir;
using Google.Protobuf;

namespace FeatureFlow.Onnx;

public static class OnnxModelFile
{
    public static byte[] Serialize(ModelProto model) => model.ToByteArray();

    public static void Write(ModelProto model, string path)
    {
        using var stream = File.Create(path);
        model.WriteTo(stream);
    }

    public static ModelProto Read(string path)
    {
        try
        {
            using var stream = File.OpenRead(path);
            return ModelProto.Parser.ParseFrom(stream);
        }
        catch (InvalidProtocolBufferException e)
        {
            throw new InvalidDataException($"{path}: not an ONNX model ({e.Message})", e);
        }
    }
}
