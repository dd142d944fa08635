using System.IO.MemoryMappedFiles;
using System.Runtime.InteropServices;
using FeatureFlow.Onnx;
using FeatureFlow.Onnx.Ir;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using DataType = FeatureFlow.Onnx.Ir.TensorProto.Types.DataType;

namespace FeatureFlow.Engine;

/// <summary>
/// The weights of a folder whose graphs keep them in one external-data file, mapped once and handed to every
/// session that opens one of those graphs, with one container for ONNX Runtime's packed copies of them.
/// </summary>
/// <remarks>
/// Each session would otherwise map the file itself and pack every MatMul weight into memory of its own: the engine's
/// graphs with and without hooks would hold the packed weights twice. ONNX Runtime shares packed weights between
/// sessions only for initializers the caller supplies (<see cref="SessionOptions.AddInitializer"/>), so this maps the
/// file, makes one tensor over each initializer's bytes, and gives the same tensors and container to each session.
/// The mapping is copy-on-write: the file is never written, whatever a kernel does with its input.
/// </remarks>
public sealed partial class SharedWeights : IDisposable
{
    // One mapping per external-data file, by full path; each view's pointer acquired once, released on Dispose.
    private readonly Dictionary<string, (MemoryMappedFile File, MemoryMappedViewAccessor View, IntPtr Start, long Length)> _maps =
        new(StringComparer.Ordinal);
    private readonly Dictionary<string, OrtValue> _tensors = new(StringComparer.Ordinal);
    private bool _disposed;

    private SharedWeights() { }

    /// <summary>ONNX Runtime's packed weights, for every session opened with <see cref="AddTo"/>.</summary>
    public PrePackedWeightsContainer Packed { get; } = new();

    /// <summary>Initializers shared.</summary>
    public int Count => _tensors.Count;

    /// <summary>Bytes of the initializers shared (each counted once).</summary>
    public long Bytes { get; private set; }

    /// <summary>
    /// The external initializers of <paramref name="graphPaths"/> (graphs of one folder), or null when they have
    /// none (weights inline: every session keeps its own).
    /// </summary>
    public static SharedWeights? Open(IEnumerable<string> graphPaths)
    {
        var weights = new SharedWeights();
        try
        {
            foreach (var path in graphPaths) weights.Add(path);
            if (weights.Count > 0) return weights;
            weights.Dispose();
            return null;
        }
        catch
        {
            weights.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Gives the mapping's pages back to the page cache once a session has been made: ONNX Runtime read each MatMul
    /// weight once to pack it and works from the packed copy since, so the mapped bytes would otherwise stay resident
    /// beside the packed ones. The few it reads while running (embedding rows, norm scales) fault back in from the file.
    /// </summary>
    public void ReleaseResidentPages()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (!OperatingSystem.IsLinux()) return;
        foreach (var (_, view, start, length) in _maps.Values)
        {
            // madvise wants a page-aligned start: the view's own base, before the offset of the file's first byte.
            var pageStart = start - (nint)view.PointerOffset;
            if (Madvise(pageStart, (nuint)(length + view.PointerOffset), MadviseDontNeed) != 0)
                throw new IOException($"madvise(MADV_DONTNEED) failed: errno {Marshal.GetLastPInvokeError()}");
        }
    }

    private const int MadviseDontNeed = 4;

    // Discarding a private file mapping's pages is safe here: nothing wrote to them, so they re-read from the file.
    [LibraryImport("libc", EntryPoint = "madvise", SetLastError = true)]
    private static partial int Madvise(IntPtr address, nuint length, int advice);

    /// <summary>Supplies every shared initializer to a session about to be made with <paramref name="options"/>;
    /// a graph without one of them ignores it.</summary>
    public void AddTo(SessionOptions options)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        foreach (var (name, tensor) in _tensors) options.AddInitializer(name, tensor);
    }

    private void Add(string graphPath)
    {
        var directory = Path.GetDirectoryName(Path.GetFullPath(graphPath))!;
        var model = OnnxModelFile.Read(graphPath);
        ExternalData.Files(model); // refuses a location outside the graph's folder
        foreach (var tensor in model.Graph.Initializer.Where(ExternalData.IsExternal))
        {
            if (_tensors.ContainsKey(tensor.Name)) continue;
            var reference = ExternalData.Reference(tensor);
            var (type, size) = ElementType(tensor, graphPath);
            var dims = tensor.Dims.ToArray();
            var bytes = size * dims.Aggregate(1L, (a, b) => a * b);
            if (reference.Length is { } length && length != bytes)
                throw new InvalidDataException($"{graphPath}: initializer '{tensor.Name}' is [{string.Join(",", dims)}] "
                    + $"({bytes} bytes) but its external data is {length} bytes");
            var (start, capacity) = Map(Path.Combine(directory, reference.Location), graphPath);
            if (reference.Offset < 0 || reference.Offset + bytes > capacity)
                throw new InvalidDataException($"{graphPath}: initializer '{tensor.Name}' lies beyond the end of "
                    + reference.Location);
            var data = start + (nint)reference.Offset;
            _tensors[tensor.Name] = OrtValue.CreateTensorValueWithData(OrtMemoryInfo.DefaultInstance, type, dims, data, bytes);
            Bytes += bytes;
        }
    }

    /// <summary>The start and length of <paramref name="dataPath"/>'s mapping, made on first use.</summary>
    private unsafe (IntPtr Start, long Length) Map(string dataPath, string graphPath)
    {
        var full = Path.GetFullPath(dataPath);
        if (!_maps.TryGetValue(full, out var map))
        {
            if (!File.Exists(full)) throw new FileNotFoundException($"{graphPath}: its external data {full} is missing", full);
            if (new FileInfo(full).Length == 0) throw new InvalidDataException($"{graphPath}: its external data {full} is empty");
            var file = MemoryMappedFile.CreateFromFile(full, FileMode.Open, null, 0, MemoryMappedFileAccess.CopyOnWrite);
            var view = file.CreateViewAccessor(0, 0, MemoryMappedFileAccess.CopyOnWrite);
            byte* start = null;
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref start);
            map = _maps[full] = (file, view, (IntPtr)(start + view.PointerOffset), new FileInfo(full).Length);
        }
        return (map.Start, map.Length);
    }

    private static (TensorElementType Type, long Size) ElementType(TensorProto tensor, string graphPath) =>
        (DataType)tensor.DataType switch
        {
            DataType.Float => (TensorElementType.Float, 4),
            DataType.Float16 => (TensorElementType.Float16, 2),
            DataType.Bfloat16 => (TensorElementType.BFloat16, 2),
            DataType.Int64 => (TensorElementType.Int64, 8),
            DataType.Int32 => (TensorElementType.Int32, 4),
            DataType.Int8 => (TensorElementType.Int8, 1),
            DataType.Uint8 => (TensorElementType.UInt8, 1),
            var other => throw new InvalidDataException(
                $"{graphPath}: initializer '{tensor.Name}' is external {other}, which the engine cannot share"),
        };

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var tensor in _tensors.Values) tensor.Dispose();
        Packed.Dispose();
        foreach (var (file, view, _, _) in _maps.Values)
        {
            view.SafeMemoryMappedViewHandle.ReleasePointer();
            view.Dispose();
            file.Dispose();
        }
    }
}
