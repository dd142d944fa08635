using System.Globalization;
using System.Security.Cryptography;
using FeatureFlow.Onnx.Ir;

namespace FeatureFlow.Onnx;

/// <summary>
/// One ONNX external-data file that every graph of a model folder references, written tensor by tensor as graphs
/// are built, so weights never sit in memory twice (once as arrays, once inside a ModelProto) and the folder holds
/// one copy of them however many graphs it has. A name names one tensor: the first graph to add it writes it, later
/// graphs point at the same bytes. Initializers smaller than <see cref="MinimumBytes"/> stay inline.
/// </summary>
public sealed class ExternalDataFile : IDisposable
{
    /// <summary>Tensors start at multiples of this, so ONNX Runtime can map them straight from the file.</summary>
    public const int Alignment = 4096;
    /// <summary>onnx.save's default size_threshold: smaller tensors cost more as references than inline.</summary>
    public const long DefaultMinimumBytes = 1024;

    private readonly FileStream _stream;
    private readonly IncrementalHash _sha256 = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
    private readonly Dictionary<string, Placement> _placed = new(StringComparer.Ordinal);
    private string? _hash;

    /// <param name="path">The file to create, in the graphs' folder (they name it relative to themselves).</param>
    /// <param name="minimumBytes">Initializers of at least this many bytes go to the file.</param>
    public ExternalDataFile(string path, long minimumBytes = DefaultMinimumBytes)
    {
        FileName = Path.GetFileName(path);
        MinimumBytes = minimumBytes;
        _stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20);
    }

    public string FileName { get; }
    public long MinimumBytes { get; }
    /// <summary>Bytes written so far (all of them once <see cref="Complete"/> has run).</summary>
    public long Length { get; private set; }

    /// <summary>Points <paramref name="tensor"/> at its bytes in the file, writing them if new.</summary>
    internal void Reference(TensorProto tensor, ReadOnlySpan<byte> bytes)
    {
        if (_hash is not null) throw new InvalidOperationException($"{FileName} is already complete");
        var dims = tensor.Dims.ToArray();
        if (_placed.TryGetValue(tensor.Name, out var placed))
        {
            if (placed.Length != bytes.Length || !placed.Dims.SequenceEqual(dims))
                throw new InvalidOperationException($"initializer '{tensor.Name}' was written to {FileName} as "
                    + $"[{string.Join(",", placed.Dims)}] and is now [{string.Join(",", dims)}]: one name, one tensor");
        }
        else
        {
            Pad();
            placed = new Placement(_stream.Position, bytes.Length, dims);
            _stream.Write(bytes);
            _sha256.AppendData(bytes);
            Length = _stream.Position;
            _placed[tensor.Name] = placed;
        }
        tensor.DataLocation = TensorProto.Types.DataLocation.External;
        tensor.ExternalData.Add(Entry("location", FileName));
        tensor.ExternalData.Add(Entry("offset", placed.Offset.ToString(CultureInfo.InvariantCulture)));
        tensor.ExternalData.Add(Entry("length", placed.Length.ToString(CultureInfo.InvariantCulture)));
    }

    /// <summary>Flushes and closes the file; returns its SHA-256 (lower-case hex).</summary>
    public string Complete()
    {
        if (_hash is not null) return _hash;
        _stream.Flush(flushToDisk: true);
        _stream.Dispose();
        return _hash = Convert.ToHexStringLower(_sha256.GetHashAndReset());
    }

    private void Pad()
    {
        var padding = (int)((Alignment - _stream.Position % Alignment) % Alignment);
        if (padding == 0) return;
        Span<byte> zeros = stackalloc byte[padding];
        zeros.Clear();
        _stream.Write(zeros);
        _sha256.AppendData(zeros);
    }

    private static StringStringEntryProto Entry(string key, string value) => new() { Key = key, Value = value };

    public void Dispose()
    {
        _stream.Dispose();
        _sha256.Dispose();
    }

    private sealed record Placement(long Offset, long Length, long[] Dims);
}
