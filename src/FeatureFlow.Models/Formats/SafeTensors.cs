using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace FeatureFlow.Models.Formats;

public enum SafeTensorsDType { F32, F16, BF16, F64, I32, I64 }

public sealed record SafeTensorEntry(string Name, SafeTensorsDType DType, long[] Shape, long Begin, long End)
{
    public long ElementCount => Shape.Aggregate(1L, (a, d) => a * d);
}

/// <summary>
/// A safetensors file (8-byte little-endian header length, JSON header, raw little-endian data), read
/// whole into memory. Floating-point tensors of any stored precision are returned as float32.
/// </summary>
public sealed class SafeTensorsFile
{
    private readonly byte[] _data;
    private readonly int _dataStart;

    private SafeTensorsFile(string path, byte[] data, int dataStart, Dictionary<string, SafeTensorEntry> tensors, Dictionary<string, string> metadata)
    {
        Path = path;
        _data = data;
        _dataStart = dataStart;
        Tensors = tensors;
        Metadata = metadata;
    }

    /// <summary>The file's path, or the label given for in-memory bytes; error messages start with it.</summary>
    public string Path { get; }
    public IReadOnlyDictionary<string, SafeTensorEntry> Tensors { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }

    public static SafeTensorsFile Read(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"safetensors file not found: {path}", path);
        return Read(File.ReadAllBytes(path), path);
    }

    /// <summary>Parses safetensors bytes that are not (yet) a file, such as an upload; <paramref name="path"/> labels errors.</summary>
    public static SafeTensorsFile Read(byte[] data, string path)
    {
        if (data.Length < 8) throw new InvalidDataException($"{path}: too short for a safetensors header");
        var headerLength = BinaryPrimitives.ReadUInt64LittleEndian(data);
        if (headerLength > (ulong)(data.Length - 8)) throw new InvalidDataException($"{path}: header length {headerLength} exceeds the file");
        JsonObject header;
        try
        {
            header = JsonNode.Parse(data.AsSpan(8, (int)headerLength))?.AsObject() ?? throw new InvalidDataException($"{path}: empty header");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: malformed safetensors header ({e.Message})", e);
        }
        var dataStart = 8 + (int)headerLength;
        var dataLength = data.Length - dataStart;
        var tensors = new Dictionary<string, SafeTensorEntry>(StringComparer.Ordinal);
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (name, node) in header)
        {
            if (name == "__metadata__")
            {
                foreach (var (k, v) in node!.AsObject()) metadata[k] = v?.GetValue<string>() ?? "";
                continue;
            }
            try
            {
                var o = node!.AsObject();
                var dtype = Enum.Parse<SafeTensorsDType>(o["dtype"]!.GetValue<string>());
                var shape = o["shape"]!.AsArray().Select(d => d!.GetValue<long>()).ToArray();
                var offsets = o["data_offsets"]!.AsArray().Select(d => d!.GetValue<long>()).ToArray();
                var entry = new SafeTensorEntry(name, dtype, shape, offsets[0], offsets[1]);
                if (entry.Begin < 0 || entry.End > dataLength || entry.End - entry.Begin != entry.ElementCount * ElementSize(dtype))
                    throw new InvalidDataException($"{path}: tensor '{name}' has offsets [{entry.Begin}, {entry.End}) that do not fit its shape or the file");
                tensors[name] = entry;
            }
            catch (Exception e) when (e is ArgumentException or NullReferenceException or InvalidOperationException or FormatException)
            {
                throw new InvalidDataException($"{path}: tensor '{name}' has a malformed header entry", e);
            }
        }
        return new SafeTensorsFile(path, data, dataStart, tensors, metadata);
    }

    public SafeTensorEntry Entry(string name) =>
        Tensors.TryGetValue(name, out var e) ? e : throw new InvalidDataException($"{Path}: no tensor '{name}' (has: {string.Join(", ", Tensors.Keys)})");

    public float[] GetFloat32(string name)
    {
        var e = Entry(name);
        var bytes = _data.AsSpan(_dataStart + (int)e.Begin, (int)(e.End - e.Begin));
        return e.DType switch
        {
            SafeTensorsDType.F32 => MemoryMarshal.Cast<byte, float>(bytes).ToArray(),
            SafeTensorsDType.F16 => MemoryMarshal.Cast<byte, Half>(bytes).ToArray().Select(h => (float)h).ToArray(),
            SafeTensorsDType.BF16 => MemoryMarshal.Cast<byte, ushort>(bytes).ToArray().Select(b => BitConverter.Int32BitsToSingle(b << 16)).ToArray(),
            SafeTensorsDType.F64 => MemoryMarshal.Cast<byte, double>(bytes).ToArray().Select(d => (float)d).ToArray(),
            _ => throw new InvalidDataException($"{Path}: tensor '{name}' is {e.DType}, not a floating-point tensor"),
        };
    }

    public int[] GetInt32(string name)
    {
        var e = Entry(name);
        var bytes = _data.AsSpan(_dataStart + (int)e.Begin, (int)(e.End - e.Begin));
        return e.DType switch
        {
            SafeTensorsDType.I32 => MemoryMarshal.Cast<byte, int>(bytes).ToArray(),
            SafeTensorsDType.I64 => MemoryMarshal.Cast<byte, long>(bytes).ToArray().Select(v => checked((int)v)).ToArray(),
            _ => throw new InvalidDataException($"{Path}: tensor '{name}' is {e.DType}, not an integer tensor"),
        };
    }

    public static int ElementSize(SafeTensorsDType dtype) => dtype switch
    {
        SafeTensorsDType.F16 or SafeTensorsDType.BF16 => 2,
        SafeTensorsDType.F32 or SafeTensorsDType.I32 => 4,
        _ => 8,
    };
}

/// <summary>Writes safetensors files; tensors keep the order given, so output bytes are reproducible.</summary>
public sealed class SafeTensorsWriter
{
    private readonly List<(string Name, SafeTensorsDType DType, long[] Shape, byte[] Bytes)> _tensors = [];
    private readonly SortedDictionary<string, string> _metadata = new(StringComparer.Ordinal);

    public SafeTensorsWriter AddFloat32(string name, ReadOnlySpan<float> values, params long[] shape) =>
        Add(name, SafeTensorsDType.F32, shape, MemoryMarshal.AsBytes(values).ToArray(), values.Length);

    public SafeTensorsWriter AddFloat16(string name, ReadOnlySpan<float> values, params long[] shape)
    {
        var halves = new Half[values.Length];
        for (var i = 0; i < values.Length; i++) halves[i] = (Half)values[i];
        return Add(name, SafeTensorsDType.F16, shape, MemoryMarshal.AsBytes(halves.AsSpan()).ToArray(), values.Length);
    }

    public SafeTensorsWriter AddInt32(string name, ReadOnlySpan<int> values, params long[] shape) =>
        Add(name, SafeTensorsDType.I32, shape, MemoryMarshal.AsBytes(values).ToArray(), values.Length);

    public SafeTensorsWriter Metadata(string key, string value)
    {
        _metadata[key] = value;
        return this;
    }

    private SafeTensorsWriter Add(string name, SafeTensorsDType dtype, long[] shape, byte[] bytes, int count)
    {
        if (shape.Aggregate(1L, (a, d) => a * d) != count)
            throw new ArgumentException($"tensor '{name}': {count} values do not fill shape [{string.Join(", ", shape)}]");
        _tensors.Add((name, dtype, shape, bytes));
        return this;
    }

    public byte[] ToBytes()
    {
        var header = new JsonObject();
        if (_metadata.Count > 0)
        {
            var meta = new JsonObject();
            foreach (var (k, v) in _metadata) meta[k] = v;
            header["__metadata__"] = meta;
        }
        long offset = 0;
        foreach (var (name, dtype, shape, bytes) in _tensors)
        {
            header[name] = new JsonObject
            {
                ["dtype"] = dtype.ToString(),
                ["shape"] = new JsonArray(shape.Select(d => (JsonNode)d).ToArray()),
                ["data_offsets"] = new JsonArray(offset, offset + bytes.Length),
            };
            offset += bytes.Length;
        }
        var json = Encoding.UTF8.GetBytes(header.ToJsonString());
        var padded = (json.Length + 7) / 8 * 8; // the format recommends 8-byte alignment of the data
        using var stream = new MemoryStream();
        Span<byte> length = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)padded);
        stream.Write(length);
        stream.Write(json);
        for (var i = json.Length; i < padded; i++) stream.WriteByte((byte)' ');
        foreach (var t in _tensors) stream.Write(t.Bytes);
        return stream.ToArray();
    }

    public void Write(string path)
    {
        var dir = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path));
        if (dir is not null) Directory.CreateDirectory(dir);
        File.WriteAllBytes(path, ToBytes());
    }
}
