using System.Runtime.InteropServices;
using System.Text;

namespace FeatureFlow.Models.Formats;

/// <summary>GGUF's value types, with the numbers the file stores.</summary>
public enum GgufValueType : uint
{
    UInt8 = 0, Int8 = 1, UInt16 = 2, Int16 = 3, UInt32 = 4, Int32 = 5, Float32 = 6, Bool = 7, String = 8, Array = 9,
    UInt64 = 10, Int64 = 11, Float64 = 12,
}

/// <summary>
/// Writes GGUF version 3 (ggml's container, the one llama.cpp loads): typed metadata, then one info per tensor
/// (name, dimensions innermost first, type, offset), then the tensors' data, each at an offset that is a multiple of
/// <see cref="Alignment"/>. Entries keep the order given, so equal input gives equal bytes. Tensors are F32 only:
/// everything we write is float32.
/// </summary>
public sealed class GgufWriter
{
    public const uint Version = 3;
    /// <summary>GGUF's default alignment, the one a reader assumes when no general.alignment is stated.</summary>
    public const int Alignment = 32;
    /// <summary>ggml's type number for float32 tensors.</summary>
    public const uint TensorF32 = 0;

    private readonly List<(string Key, Action<BinaryWriter> WriteValue)> _metadata = [];
    private readonly List<(string Name, long[] Dims, ReadOnlyMemory<float> Data)> _tensors = [];

    public GgufWriter String(string key, string value) =>
        Metadata(key, w => { w.Write((uint)GgufValueType.String); WriteString(w, Encoding.UTF8.GetBytes(value)); });

    public GgufWriter UInt32(string key, uint value) =>
        Metadata(key, w => { w.Write((uint)GgufValueType.UInt32); w.Write(value); });

    public GgufWriter Float32(string key, float value) =>
        Metadata(key, w => { w.Write((uint)GgufValueType.Float32); w.Write(value); });

    /// <summary>An array of strings given as their UTF-8 bytes, written byte for byte (token texts must be exact).
    /// </summary>
    public GgufWriter Strings(string key, IReadOnlyList<byte[]> values) =>
        Array(key, GgufValueType.String, values.Count, w => { foreach (var v in values) WriteString(w, v); });

    public GgufWriter Float32s(string key, IReadOnlyList<float> values) =>
        Array(key, GgufValueType.Float32, values.Count, w => { foreach (var v in values) w.Write(v); });

    public GgufWriter Int32s(string key, IReadOnlyList<int> values) =>
        Array(key, GgufValueType.Int32, values.Count, w => { foreach (var v in values) w.Write(v); });

    /// <summary>
    /// An F32 tensor. <paramref name="dims"/> are ggml's, innermost (fastest-varying) first: a row-major
    /// [rows, columns] matrix is <c>(columns, rows)</c>. The data is referenced, not copied, until
    /// <see cref="Write"/>.
    /// </summary>
    public GgufWriter Tensor(string name, ReadOnlyMemory<float> data, params long[] dims)
    {
        if (dims.Length is 0 or > 4 || dims.Any(d => d <= 0))
            throw new ArgumentException($"tensor '{name}': ggml tensors have 1 to 4 positive dimensions, "
                + $"found [{string.Join(", ", dims)}]");
        var elements = dims.Aggregate(1L, (a, d) => a * d);
        if (elements != data.Length)
            throw new ArgumentException($"tensor '{name}': dimensions [{string.Join(", ", dims)}] hold {elements} "
                + $"values, the data has {data.Length}");
        if (_tensors.Any(t => t.Name == name)) throw new ArgumentException($"tensor '{name}' is added twice");
        _tensors.Add((name, dims, data));
        return this;
    }

    /// <summary>Writes the file through a temporary file beside it, so a failed write leaves no partial file.</summary>
    public void Write(string path)
    {
        var full = Path.GetFullPath(path);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        var temp = $"{full}.{Guid.NewGuid():N}.tmp";
        try
        {
            using (var stream = new BufferedStream(File.Create(temp), 1 << 20))
            using (var w = new BinaryWriter(stream))
                WriteTo(w);
            File.Move(temp, full, overwrite: true);
        }
        finally
        {
            File.Delete(temp);
        }
    }

    private void WriteTo(BinaryWriter w)
    {
        w.Write("GGUF"u8);
        w.Write(Version);
        w.Write((ulong)_tensors.Count);
        w.Write((ulong)_metadata.Count);
        foreach (var (key, writeValue) in _metadata)
        {
            WriteString(w, Encoding.UTF8.GetBytes(key));
            writeValue(w);
        }
        ulong offset = 0;
        foreach (var (name, dims, data) in _tensors)
        {
            WriteString(w, Encoding.UTF8.GetBytes(name));
            w.Write((uint)dims.Length);
            foreach (var d in dims) w.Write((ulong)d);
            w.Write(TensorF32);
            w.Write(offset);
            offset += Align((ulong)data.Length * sizeof(float));
        }
        Pad(w);
        foreach (var (_, _, data) in _tensors)
        {
            w.Write(MemoryMarshal.AsBytes(data.Span));
            Pad(w);
        }
    }

    private GgufWriter Array(string key, GgufValueType elementType, int count, Action<BinaryWriter> writeElements) =>
        Metadata(key, w =>
        {
            w.Write((uint)GgufValueType.Array);
            w.Write((uint)elementType);
            w.Write((ulong)count);
            writeElements(w);
        });

    private GgufWriter Metadata(string key, Action<BinaryWriter> writeValue)
    {
        if (_metadata.Any(m => m.Key == key)) throw new ArgumentException($"metadata key '{key}' is set twice");
        _metadata.Add((key, writeValue));
        return this;
    }

    private static ulong Align(ulong n) => (n + Alignment - 1) / Alignment * Alignment;

    private static void Pad(BinaryWriter w)
    {
        while (w.BaseStream.Position % Alignment != 0) w.Write((byte)0);
    }

    private static void WriteString(BinaryWriter w, byte[] utf8)
    {
        w.Write((ulong)utf8.Length);
        w.Write(utf8);
    }
}
