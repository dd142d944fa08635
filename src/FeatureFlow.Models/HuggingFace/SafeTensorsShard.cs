using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Win32.SafeHandles;

namespace FeatureFlow.Models.HuggingFace;

/// <summary>One tensor's entry in a safetensors header; <see cref="DType"/> is kept as written, so any can be named.
/// </summary>
public sealed record ShardTensor(string Name, string DType, long[] Shape, long Begin, long End)
{
    public long ElementCount => Shape.Aggregate(1L, (a, d) => a * d);
}

/// <summary>
/// A safetensors file read tensor by tensor: only the header is parsed on opening, and each read fetches one
/// tensor's bytes from the file, so shards of any size convert without being loaded whole (Formats.SafeTensorsFile,
/// which reads files into memory, serves the small SAE and pack files).
/// </summary>
public sealed class SafeTensorsShard : IDisposable
{
    /// <summary>The stored precisions converted to float32; others are refused by name.</summary>
    public static readonly IReadOnlyList<string> ReadableDTypes = ["F32", "F16", "BF16"];

    private const int ChunkBytes = 1 << 22;
    private readonly SafeFileHandle _file;
    private readonly long _dataStart;

    private SafeTensorsShard(string path, SafeFileHandle file, long dataStart, Dictionary<string, ShardTensor> tensors)
    {
        Path = path;
        _file = file;
        _dataStart = dataStart;
        Tensors = tensors;
    }

    public string Path { get; }
    public IReadOnlyDictionary<string, ShardTensor> Tensors { get; }

    public static SafeTensorsShard Open(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"safetensors file not found: {path}", path);
        var file = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.RandomAccess);
        try
        {
            var length = RandomAccess.GetLength(file);
            Span<byte> prefix = stackalloc byte[8];
            if (length < 8 || RandomAccess.Read(file, prefix, 0) != 8)
                throw new InvalidDataException($"{path}: too short for a safetensors header ({length} bytes)");
            var headerLength = BinaryPrimitives.ReadUInt64LittleEndian(prefix);
            if (headerLength > (ulong)(length - 8) || headerLength > int.MaxValue)
                throw new InvalidDataException(
                    $"{path}: header length {headerLength} does not fit the file ({length} bytes)");
            var header = new byte[(int)headerLength];
            if (RandomAccess.Read(file, header, 8) != header.Length)
                throw new InvalidDataException($"{path}: the header is cut short");
            var dataStart = 8 + (long)headerLength;
            var tensors = ParseHeader(path, header, length - dataStart);
            return new SafeTensorsShard(path, file, dataStart, tensors);
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    /// <summary>The tensor as float32, converted from F32, F16 or BF16.</summary>
    public float[] ReadFloat32(ShardTensor t)
    {
        var elementSize = t.DType switch
        {
            "F32" => 4,
            "F16" or "BF16" => 2,
            _ => throw new InvalidDataException($"{Path}: tensor '{t.Name}' is {t.DType}; expected one of "
                + $"{string.Join(", ", ReadableDTypes)} (read as float32)"),
        };
        if (t.End - t.Begin != t.ElementCount * elementSize)
            throw new InvalidDataException($"{Path}: tensor '{t.Name}' has {t.End - t.Begin} bytes for {t.DType} "
                + $"[{string.Join(", ", t.Shape)}] ({t.ElementCount * elementSize} expected)");
        if (t.ElementCount > Array.MaxLength)
            throw new InvalidDataException($"{Path}: tensor '{t.Name}' has {t.ElementCount} elements, more than one "
                + $"array holds ({Array.MaxLength})");
        var values = new float[t.ElementCount];
        if (elementSize == 4)
        {
            // In pieces: a span of bytes cannot cover a tensor past 2 GiB.
            for (var done = 0; done < values.Length; done += ChunkBytes / 4)
            {
                var piece = values.AsSpan(done, Math.Min(ChunkBytes / 4, values.Length - done));
                ReadExactly(t, MemoryMarshal.AsBytes(piece), t.Begin + 4L * done);
            }
            return values;
        }
        // Half-precision tensors go through a bounded buffer, so no second full-size copy exists at any time.
        var buffer = new byte[(int)Math.Min(ChunkBytes, t.End - t.Begin)];
        var bf16 = t.DType == "BF16";
        for (var done = 0; done < values.Length;)
        {
            var count = Math.Min(buffer.Length / 2, values.Length - done);
            var bytes = buffer.AsSpan(0, 2 * count);
            ReadExactly(t, bytes, t.Begin + 2L * done);
            var halves = MemoryMarshal.Cast<byte, ushort>(bytes);
            var target = values.AsSpan(done, count);
            for (var i = 0; i < count; i++)
                target[i] = bf16
                    ? BitConverter.Int32BitsToSingle(halves[i] << 16)
                    : (float)BitConverter.UInt16BitsToHalf(halves[i]);
            done += count;
        }
        return values;
    }

    private void ReadExactly(ShardTensor t, Span<byte> target, long offset)
    {
        while (target.Length > 0)
        {
            var read = RandomAccess.Read(_file, target, _dataStart + offset);
            if (read == 0) throw new InvalidDataException($"{Path}: tensor '{t.Name}' is cut short");
            target = target[read..];
            offset += read;
        }
    }

    private static Dictionary<string, ShardTensor> ParseHeader(string path, byte[] header, long dataLength)
    {
        JsonObject json;
        try
        {
            json = JsonNode.Parse(header) as JsonObject
                ?? throw new InvalidDataException($"{path}: empty safetensors header");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: malformed safetensors header ({e.Message})", e);
        }
        var tensors = new Dictionary<string, ShardTensor>(StringComparer.Ordinal);
        foreach (var (name, node) in json)
        {
            if (name == "__metadata__") continue;
            ShardTensor entry;
            try
            {
                var o = node!.AsObject();
                var offsets = o["data_offsets"]!.AsArray().Select(d => d!.GetValue<long>()).ToArray();
                entry = new ShardTensor(name, o["dtype"]!.GetValue<string>(),
                    o["shape"]!.AsArray().Select(d => d!.GetValue<long>()).ToArray(), offsets[0], offsets[1]);
            }
            catch (Exception e) when (e is InvalidOperationException or NullReferenceException or FormatException
                or IndexOutOfRangeException)
            {
                throw new InvalidDataException($"{path}: tensor '{name}' has a malformed header entry", e);
            }
            if (entry.Begin < 0 || entry.End < entry.Begin || entry.End > dataLength || entry.Shape.Any(d => d < 0))
                throw new InvalidDataException($"{path}: tensor '{name}' has offsets [{entry.Begin}, {entry.End}) "
                    + $"outside the file's {dataLength} data bytes");
            tensors[name] = entry;
        }
        return tensors;
    }

    public void Dispose() => _file.Dispose();
}
