using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Win32.SafeHandles;

namespace FeatureFlow.Models.Formats;

/// <summary>The safetensors format's dtypes, by the names its headers use.</summary>
public enum SafeTensorsDType { F32, F16, BF16, F64, I32, I64, BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, U32, U64 }

public sealed record SafeTensorEntry(string Name, SafeTensorsDType DType, long[] Shape, long Begin, long End)
{
    public long ElementCount => Shape.Aggregate(1L, (a, d) => a * d);
}

/// <summary>
/// A safetensors file (8-byte little-endian header length, JSON header, raw little-endian data), either read whole
/// into memory (<see cref="Read(string)"/>: the small SAE, pack and corpus files) or opened with only its header
/// read, each tensor then fetched from the file on its own (<see cref="Open"/>: checkpoint shards of any size).
/// Floating-point tensors of any stored precision are returned as float32.
/// </summary>
public sealed class SafeTensorsFile : IDisposable
{
    // Tensors are read and converted in pieces: a span of bytes cannot cover a tensor past 2 GiB, and a
    // half-precision tensor never has a second full-size copy.
    private const int ChunkBytes = 1 << 22;
    private readonly byte[]? _data;
    private readonly SafeFileHandle? _file;
    private readonly long _dataStart;

    private SafeTensorsFile(string path, byte[]? data, SafeFileHandle? file)
    {
        Path = path;
        _data = data;
        _file = file;
        var length = data?.LongLength ?? RandomAccess.GetLength(file!);
        if (length < 8) throw new InvalidDataException($"{path}: too short for a safetensors header ({length} bytes)");
        Span<byte> prefix = stackalloc byte[8];
        ReadAt(prefix, 0, "the header");
        var headerLength = BinaryPrimitives.ReadUInt64LittleEndian(prefix);
        if (headerLength > (ulong)(length - 8) || headerLength > int.MaxValue)
            throw new InvalidDataException(
                $"{path}: header length {headerLength} does not fit the file ({length} bytes)");
        var header = new byte[(int)headerLength];
        ReadAt(header, 8, "the header");
        _dataStart = 8 + (long)headerLength;
        (Tensors, Metadata) = ParseHeader(path, header, length - _dataStart);
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
    public static SafeTensorsFile Read(byte[] data, string path) => new(path, data, null);

    /// <summary>Reads only the header; tensors are read from the file when asked for, until disposed.</summary>
    public static SafeTensorsFile Open(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"safetensors file not found: {path}", path);
        var file = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.RandomAccess);
        try
        {
            return new SafeTensorsFile(path, null, file);
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    public SafeTensorEntry Entry(string name) =>
        Tensors.TryGetValue(name, out var e) ? e : throw new InvalidDataException($"{Path}: no tensor '{name}' (has: {string.Join(", ", Tensors.Keys)})");

    public float[] GetFloat32(string name)
    {
        var e = Entry(name);
        return e.DType switch
        {
            SafeTensorsDType.F32 => ReadConverted<float>(e, (stored, values) =>
                MemoryMarshal.Cast<byte, float>(stored).CopyTo(values)),
            SafeTensorsDType.F16 => ReadConverted<float>(e, (stored, values) =>
            {
                var halves = MemoryMarshal.Cast<byte, Half>(stored);
                for (var i = 0; i < values.Length; i++) values[i] = (float)halves[i];
            }),
            SafeTensorsDType.BF16 => ReadConverted<float>(e, (stored, values) =>
            {
                var upperHalves = MemoryMarshal.Cast<byte, ushort>(stored);
                for (var i = 0; i < values.Length; i++)
                    values[i] = BitConverter.Int32BitsToSingle(upperHalves[i] << 16);
            }),
            SafeTensorsDType.F64 => ReadConverted<float>(e, (stored, values) =>
            {
                var doubles = MemoryMarshal.Cast<byte, double>(stored);
                for (var i = 0; i < values.Length; i++) values[i] = (float)doubles[i];
            }),
            _ => throw new InvalidDataException($"{Path}: tensor '{name}' is {e.DType}, not a floating-point tensor"),
        };
    }

    public int[] GetInt32(string name)
    {
        var e = Entry(name);
        return e.DType switch
        {
            SafeTensorsDType.I32 => ReadConverted<int>(e, (stored, values) =>
                MemoryMarshal.Cast<byte, int>(stored).CopyTo(values)),
            SafeTensorsDType.I64 => ReadConverted<int>(e, (stored, values) =>
            {
                var longs = MemoryMarshal.Cast<byte, long>(stored);
                for (var i = 0; i < values.Length; i++) values[i] = checked((int)longs[i]);
            }),
            _ => throw new InvalidDataException($"{Path}: tensor '{name}' is {e.DType}, not an integer tensor"),
        };
    }

    public static int ElementSize(SafeTensorsDType dtype) => dtype switch
    {
        SafeTensorsDType.BOOL or SafeTensorsDType.U8 or SafeTensorsDType.I8 or SafeTensorsDType.F8_E5M2
            or SafeTensorsDType.F8_E4M3 => 1,
        SafeTensorsDType.F16 or SafeTensorsDType.BF16 or SafeTensorsDType.I16 or SafeTensorsDType.U16 => 2,
        SafeTensorsDType.F32 or SafeTensorsDType.I32 or SafeTensorsDType.U32 => 4,
        _ => 8,
    };

    public void Dispose() => _file?.Dispose();

    private delegate void Conversion<T>(ReadOnlySpan<byte> stored, Span<T> values);

    private T[] ReadConverted<T>(SafeTensorEntry e, Conversion<T> convert)
    {
        if (e.ElementCount > Array.MaxLength)
            throw new InvalidDataException($"{Path}: tensor '{e.Name}' has {e.ElementCount} elements, more than one "
                + $"array holds ({Array.MaxLength})");
        var size = ElementSize(e.DType);
        var values = new T[e.ElementCount];
        var buffer = new byte[(int)Math.Min(ChunkBytes, e.End - e.Begin)];
        for (var done = 0; done < values.Length;)
        {
            var count = Math.Min(buffer.Length / size, values.Length - done);
            var stored = buffer.AsSpan(0, size * count);
            ReadAt(stored, _dataStart + e.Begin + (long)size * done, $"tensor '{e.Name}'");
            convert(stored, values.AsSpan(done, count));
            done += count;
        }
        return values;
    }

    private void ReadAt(Span<byte> target, long position, string what)
    {
        if (_data is not null)
        {
            _data.AsSpan((int)position, target.Length).CopyTo(target);
            return;
        }
        while (target.Length > 0)
        {
            var read = RandomAccess.Read(_file!, target, position);
            if (read == 0) throw new InvalidDataException($"{Path}: {what} is cut short");
            target = target[read..];
            position += read;
        }
    }

    private static (Dictionary<string, SafeTensorEntry>, Dictionary<string, string>) ParseHeader(string path,
        byte[] header, long dataLength)
    {
        JsonObject json;
        try
        {
            json = JsonNode.Parse(header) as JsonObject
                ?? throw new InvalidDataException($"{path}: malformed safetensors header (not a JSON object)");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: malformed safetensors header ({e.Message})", e);
        }
        var tensors = new Dictionary<string, SafeTensorEntry>(StringComparer.Ordinal);
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (name, node) in json)
        {
            if (name == "__metadata__")
            {
                foreach (var (k, v) in node!.AsObject()) metadata[k] = v?.GetValue<string>() ?? "";
                continue;
            }
            SafeTensorEntry entry;
            try
            {
                var o = node!.AsObject();
                var dtype = o["dtype"]!.GetValue<string>();
                if (!Enum.GetNames<SafeTensorsDType>().Contains(dtype))
                    throw new InvalidDataException($"{path}: tensor '{name}' is {dtype}, not one of the safetensors "
                        + $"dtypes {string.Join(", ", Enum.GetNames<SafeTensorsDType>())}");
                var offsets = o["data_offsets"]!.AsArray().Select(d => d!.GetValue<long>()).ToArray();
                entry = new SafeTensorEntry(name, Enum.Parse<SafeTensorsDType>(dtype),
                    o["shape"]!.AsArray().Select(d => d!.GetValue<long>()).ToArray(), offsets[0], offsets[1]);
            }
            catch (Exception e) when (e is InvalidOperationException or NullReferenceException or FormatException
                or IndexOutOfRangeException)
            {
                throw new InvalidDataException($"{path}: tensor '{name}' has a malformed header entry", e);
            }
            if (entry.Begin < 0 || entry.End < entry.Begin || entry.End > dataLength || entry.Shape.Any(d => d < 0))
                throw new InvalidDataException($"{path}: tensor '{name}' has offsets [{entry.Begin}, {entry.End}) "
                    + $"that do not fit the file's {dataLength} data bytes");
            var expected = entry.ElementCount * ElementSize(entry.DType);
            if (entry.End - entry.Begin != expected)
                throw new InvalidDataException($"{path}: tensor '{name}' has {entry.End - entry.Begin} bytes, which do not fit "
                    + $"{entry.DType} [{string.Join(", ", entry.Shape)}] ({expected} expected)");
            tensors[name] = entry;
        }
        return (tensors, metadata);
    }
}

/// <summary>Writes safetensors files; tensors keep the order given, so output bytes are reproducible.</summary>
public sealed class SafeTensorsWriter
{
    private readonly List<(string Name, SafeTensorsDType DType, long[] Shape, byte[] Bytes)> _tensors = [];
    private readonly SortedDictionary<string, string> _metadata = new(StringComparer.Ordinal);

    public SafeTensorsWriter AddFloat32(string name, ReadOnlySpan<float> values, params long[] shape) =>
        AddEncoded(name, SafeTensorsDType.F32, shape, Encode(values, SafeTensorsDType.F32));

    public SafeTensorsWriter AddFloat16(string name, ReadOnlySpan<float> values, params long[] shape) =>
        AddEncoded(name, SafeTensorsDType.F16, shape, Encode(values, SafeTensorsDType.F16));

    public SafeTensorsWriter AddInt32(string name, ReadOnlySpan<int> values, params long[] shape) =>
        AddEncoded(name, SafeTensorsDType.I32, shape, MemoryMarshal.AsBytes(values).ToArray());

    /// <summary>A tensor whose bytes are already stored as <paramref name="dtype"/>, whichever it is.</summary>
    public SafeTensorsWriter AddEncoded(string name, SafeTensorsDType dtype, long[] shape, byte[] bytes)
    {
        var size = SafeTensorsFile.ElementSize(dtype);
        if (shape.Aggregate(1L, (a, d) => a * d) * size != bytes.Length)
            throw new ArgumentException($"tensor '{name}': {bytes.Length / size} {dtype} values do not fill shape "
                + $"[{string.Join(", ", shape)}]");
        _tensors.Add((name, dtype, shape, bytes));
        return this;
    }

    /// <summary>
    /// Float32 values stored as F32, F16 or BF16; both half precisions round to nearest, ties to even, as torch
    /// converts.
    /// </summary>
    public static byte[] Encode(ReadOnlySpan<float> values, SafeTensorsDType dtype)
    {
        if (dtype == SafeTensorsDType.F32) return MemoryMarshal.AsBytes(values).ToArray();
        var halves = new ushort[values.Length];
        for (var i = 0; i < values.Length; i++)
        {
            halves[i] = dtype switch
            {
                SafeTensorsDType.F16 => BitConverter.HalfToUInt16Bits((Half)values[i]),
                SafeTensorsDType.BF16 => RoundToBFloat16(BitConverter.SingleToUInt32Bits(values[i])),
                _ => throw new ArgumentException($"no float32 encoding for dtype {dtype}", nameof(dtype)),
            };
        }
        return MemoryMarshal.AsBytes(halves.AsSpan()).ToArray();
    }

    private static ushort RoundToBFloat16(uint bits) => (ushort)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);

    public SafeTensorsWriter Metadata(string key, string value)
    {
        _metadata[key] = value;
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
