using System.Runtime.InteropServices;
using System.Text;

namespace FeatureFlow.Models.Formats;

/// <summary>One tensor's entry in a GGUF file: dimensions innermost first, ggml type number, data offset.</summary>
public sealed record GgufTensorInfo(string Name, long[] Dims, uint Type, ulong Offset)
{
    public long Elements => Dims.Aggregate(1L, (a, d) => a * d);
}

/// <summary>
/// A GGUF file's header, metadata and tensor infos (versions 2 and 3), read without its tensor data, which
/// <see cref="ReadFloat32"/> reads one tensor at a time. Metadata values are .NET values of the stored type; arrays
/// of numbers and strings are typed arrays (uint[], int[], float[], string[], …).
/// </summary>
public sealed class GgufFile
{
    private GgufFile(string path, uint version, IReadOnlyDictionary<string, object> metadata,
        IReadOnlyList<GgufTensorInfo> tensors, long dataStart)
    {
        (Path, Version, Metadata, Tensors, DataStart) = (path, version, metadata, tensors, dataStart);
    }

    public string Path { get; }
    public uint Version { get; }
    public IReadOnlyDictionary<string, object> Metadata { get; }
    public IReadOnlyList<GgufTensorInfo> Tensors { get; }
    /// <summary>Where the tensor data begins: tensor offsets count from here.</summary>
    public long DataStart { get; }

    public static GgufFile Open(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"GGUF file not found: {path}", path);
        using var r = new BinaryReader(File.OpenRead(path), Encoding.UTF8);
        try
        {
            if (Encoding.ASCII.GetString(r.ReadBytes(4)) != "GGUF")
                throw new InvalidDataException($"{path}: not a GGUF file (no GGUF magic)");
            var version = r.ReadUInt32();
            if (version is < 2 or > 3)
                throw new InvalidDataException($"{path}: GGUF version {version} is not supported (2 or 3 expected)");
            var tensorCount = Count(r, r.ReadUInt64(), path);
            var keyCount = Count(r, r.ReadUInt64(), path);
            var metadata = new Dictionary<string, object>(keyCount, StringComparer.Ordinal);
            for (var i = 0; i < keyCount; i++)
            {
                var key = ReadString(r, path);
                if (!metadata.TryAdd(key, ReadValue(r, (GgufValueType)r.ReadUInt32(), path)))
                    throw new InvalidDataException($"{path}: metadata key '{key}' appears twice");
            }
            var tensors = new List<GgufTensorInfo>(tensorCount);
            for (var i = 0; i < tensorCount; i++)
            {
                var name = ReadString(r, path);
                var dimCount = r.ReadUInt32();
                if (dimCount is 0 or > 4)
                    throw new InvalidDataException(
                        $"{path}: tensor '{name}' has {dimCount} dimensions (1 to 4 expected)");
                var dims = new long[dimCount];
                for (var d = 0; d < dims.Length; d++) dims[d] = checked((long)r.ReadUInt64());
                tensors.Add(new GgufTensorInfo(name, dims, r.ReadUInt32(), r.ReadUInt64()));
            }
            var alignment = metadata.TryGetValue("general.alignment", out var a) && a is uint stated
                ? stated : (uint)GgufWriter.Alignment;
            if (alignment == 0) throw new InvalidDataException($"{path}: general.alignment is 0");
            var dataStart = (r.BaseStream.Position + alignment - 1) / alignment * alignment;
            return new GgufFile(path, version, metadata, tensors, dataStart);
        }
        catch (EndOfStreamException)
        {
            throw new InvalidDataException($"{path}: truncated GGUF file");
        }
    }

    public GgufTensorInfo Tensor(string name) =>
        Tensors.SingleOrDefault(t => t.Name == name)
        ?? throw new InvalidDataException($"{Path}: no tensor '{name}'");

    /// <summary>The values of an F32 tensor, in storage order (innermost dimension fastest).</summary>
    public float[] ReadFloat32(GgufTensorInfo tensor)
    {
        if (tensor.Type != GgufWriter.TensorF32)
            throw new InvalidDataException($"{Path}: tensor '{tensor.Name}' has ggml type {tensor.Type}, not F32 (0)");
        using var stream = File.OpenRead(Path);
        var start = DataStart + (long)tensor.Offset;
        var values = new float[tensor.Elements];
        if (start + 4 * values.LongLength > stream.Length)
            throw new InvalidDataException($"{Path}: tensor '{tensor.Name}' runs past the end of the file");
        stream.Position = start;
        stream.ReadExactly(MemoryMarshal.AsBytes(values.AsSpan()));
        return values;
    }

    /// <summary>A count from the file, refused when the rest of the file could not hold that many entries (garbage
    /// would otherwise allocate without bound).</summary>
    private static int Count(BinaryReader r, ulong count, string path)
    {
        var remaining = r.BaseStream.Length - r.BaseStream.Position;
        return count <= (ulong)remaining ? (int)count
            : throw new InvalidDataException(
                $"{path}: truncated or corrupt GGUF file (a count of {count} in the {remaining} bytes left)");
    }

    private static string ReadString(BinaryReader r, string path)
    {
        var length = Count(r, r.ReadUInt64(), path);
        var bytes = r.ReadBytes(length);
        return bytes.Length == length ? Encoding.UTF8.GetString(bytes) : throw new EndOfStreamException();
    }

    private static object ReadValue(BinaryReader r, GgufValueType type, string path) => type switch
    {
        GgufValueType.UInt8 => r.ReadByte(),
        GgufValueType.Int8 => r.ReadSByte(),
        GgufValueType.UInt16 => r.ReadUInt16(),
        GgufValueType.Int16 => r.ReadInt16(),
        GgufValueType.UInt32 => r.ReadUInt32(),
        GgufValueType.Int32 => r.ReadInt32(),
        GgufValueType.Float32 => r.ReadSingle(),
        GgufValueType.Bool => r.ReadByte() != 0,
        GgufValueType.String => ReadString(r, path),
        GgufValueType.Array => ReadArray(r, path),
        GgufValueType.UInt64 => r.ReadUInt64(),
        GgufValueType.Int64 => r.ReadInt64(),
        GgufValueType.Float64 => r.ReadDouble(),
        _ => throw new InvalidDataException($"{path}: unknown GGUF value type {(uint)type}"),
    };

    private static Array ReadArray(BinaryReader r, string path)
    {
        var type = (GgufValueType)r.ReadUInt32();
        var count = Count(r, r.ReadUInt64(), path);
        Array Fill<T>(Func<T> read)
        {
            var values = new T[count];
            for (var i = 0; i < count; i++) values[i] = read();
            return values;
        }
        return type switch
        {
            GgufValueType.UInt32 => Fill(r.ReadUInt32),
            GgufValueType.Int32 => Fill(r.ReadInt32),
            GgufValueType.Float32 => Fill(r.ReadSingle),
            GgufValueType.String => Fill(() => ReadString(r, path)),
            _ => Fill(() => ReadValue(r, type, path)),
        };
    }
}
