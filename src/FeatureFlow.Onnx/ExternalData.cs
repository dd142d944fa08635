using System.Globalization;
using System.Runtime.InteropServices;
using FeatureFlow.Onnx.Ir;
using Google.Protobuf;
using DataLocation = FeatureFlow.Onnx.Ir.TensorProto.Types.DataLocation;
using DataType = FeatureFlow.Onnx.Ir.TensorProto.Types.DataType;

namespace FeatureFlow.Onnx;

/// <summary>Where an external tensor's bytes are: a file beside the model, an offset and a length (ONNX external data).</summary>
public sealed record ExternalDataReference(string Location, long Offset, long? Length);

/// <summary>
/// ONNX external data: tensors whose bytes live in a file beside the model (<c>model.onnx.data</c>) rather than in
/// the protobuf, as large exports are written. Reads them, names the files a model needs, and moves a model's large
/// initializers out into such a file.
/// </summary>
public static class ExternalData
{
    public static bool IsExternal(TensorProto tensor) => tensor.DataLocation == DataLocation.External;

    public static ExternalDataReference Reference(TensorProto tensor)
    {
        if (!IsExternal(tensor)) throw new ArgumentException($"tensor '{tensor.Name}' keeps its data inside the model");
        string? location = null;
        long offset = 0;
        long? length = null;
        foreach (var entry in tensor.ExternalData)
        {
            switch (entry.Key)
            {
                case "location": location = entry.Value; break;
                case "offset": offset = long.Parse(entry.Value, CultureInfo.InvariantCulture); break;
                case "length": length = long.Parse(entry.Value, CultureInfo.InvariantCulture); break;
            }
        }
        if (string.IsNullOrEmpty(location)) throw new InvalidDataException($"external tensor '{tensor.Name}' names "
            + $"no location");
        return new ExternalDataReference(location, offset, length);
    }

    /// <summary>
    /// The distinct external data files the model's initializers name, as written (relative to the model's folder).
    /// Refuses a location that leaves the folder, so a copy of the folder is always a complete model.
    /// </summary>
    public static IReadOnlyList<string> Files(ModelProto model)
    {
        var files = model.Graph.Initializer.Where(IsExternal).Select(t => Reference(t).Location).Distinct().ToArray();
        foreach (var file in files)
        {
            var parts = file.Split('/', '\\');
            if (Path.IsPathRooted(file) || parts.Contains(".."))
                throw new InvalidDataException($"external data location '{file}' is outside the model's folder");
        }
        return files;
    }

    /// <summary>The tensor's bytes as stored (little-endian), from the model, its typed fields, or its external file.</summary>
    public static byte[] ReadBytes(TensorProto tensor, string modelDirectory)
    {
        if (IsExternal(tensor))
        {
            var reference = Reference(tensor);
            var path = Path.Combine(modelDirectory, reference.Location);
            if (!File.Exists(path)) throw new FileNotFoundException($"external data file {path} of tensor "
                + $"'{tensor.Name}' is missing", path);
            using var stream = File.OpenRead(path);
            var length = reference.Length ?? stream.Length - reference.Offset;
            if (reference.Offset + length > stream.Length)
                throw new InvalidDataException($"tensor '{tensor.Name}': {path} ends before offset "
                    + $"{reference.Offset} + length {length}");
            var bytes = new byte[length];
            stream.Position = reference.Offset;
            stream.ReadExactly(bytes);
            return bytes;
        }
        if (!tensor.RawData.IsEmpty) return tensor.RawData.ToByteArray();
        return (DataType)tensor.DataType switch
        {
            DataType.Float => MemoryMarshal.AsBytes(tensor.FloatData.ToArray().AsSpan()).ToArray(),
            DataType.Int64 => MemoryMarshal.AsBytes(tensor.Int64Data.ToArray().AsSpan()).ToArray(),
            DataType.Int32 => MemoryMarshal.AsBytes(tensor.Int32Data.ToArray().AsSpan()).ToArray(),
            DataType.Double => MemoryMarshal.AsBytes(tensor.DoubleData.ToArray().AsSpan()).ToArray(),
            var t => throw new NotSupportedException($"tensor '{tensor.Name}': reading {t} from typed fields"),
        };
    }

    /// <summary>
    /// Moves the raw bytes of every initializer of at least <paramref name="minimumBytes"/> into
    /// <paramref name="dataFile"/> (created in <paramref name="directory"/>, laid out as <see cref="ExternalDataFile"/>
    /// lays out our exports' weights) and leaves references in their place; the model itself must then be written
    /// into the same directory.
    /// </summary>
    public static void Externalize(ModelProto model, string directory, string dataFile,
        long minimumBytes = ExternalDataFile.DefaultMinimumBytes)
    {
        using var file = new ExternalDataFile(Path.Combine(directory, dataFile), minimumBytes);
        Externalize(model, file);
        file.Complete();
    }

    /// <summary>
    /// Moves the raw bytes of every initializer of at least the file's minimum size into <paramref name="file"/>, which
    /// several graphs may share (a name already written is referenced, not written again).
    /// </summary>
    public static void Externalize(ModelProto model, ExternalDataFile file)
    {
        foreach (var tensor in model.Graph.Initializer.Where(t => !IsExternal(t) && t.RawData.Length >= file.MinimumBytes))
        {
            file.Reference(tensor, tensor.RawData.Span);
            tensor.RawData = ByteString.Empty;
        }
    }
}
