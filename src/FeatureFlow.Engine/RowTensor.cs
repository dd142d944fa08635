using System.Runtime.InteropServices;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace FeatureFlow.Engine;

/// <summary>
/// A preallocated, pinned tensor [rows, …] whose leading rows are the batch: one buffer for the whole life of
/// the engine, written in place. ONNX Runtime views over a prefix of rows (a decode step) and over one row
/// (a prefill) are made once and kept, so binding them on a step allocates nothing.
/// </summary>
public sealed class RowTensor<T> : IDisposable where T : unmanaged
{
    private readonly T[] _data;
    private readonly long[] _rowShape;
    private readonly OrtValue?[] _prefixViews;
    private readonly OrtValue?[] _rowViews;

    public RowTensor(int rows, params long[] rowShape)
    {
        Rows = rows;
        _rowShape = rowShape;
        RowLength = (int)rowShape.Aggregate(1L, (a, b) => a * b);
        _data = GC.AllocateArray<T>(checked(rows * RowLength), pinned: true);
        _prefixViews = new OrtValue?[rows + 1];
        _rowViews = new OrtValue?[rows];
    }

    public int Rows { get; }
    public int RowLength { get; }

    public Span<T> Row(int slot) => _data.AsSpan(slot * RowLength, RowLength);

    /// <summary>Rows 0..<paramref name="rows"/>−1, contiguous.</summary>
    public Span<T> Leading(int rows) => _data.AsSpan(0, rows * RowLength);

    /// <summary>Rows 0..<paramref name="rows"/>−1 as one tensor [rows, …].</summary>
    public OrtValue Prefix(int rows) => _prefixViews[rows] ??= View(0, rows);

    /// <summary>The row in <paramref name="slot"/> as a tensor [1, …].</summary>
    public OrtValue RowValue(int slot) => _rowViews[slot] ??= View(slot, 1);

    /// <summary>Copies a whole row into another slot.</summary>
    public void Copy(int from, int to) => Array.Copy(_data, from * RowLength, _data, to * RowLength, RowLength);

    private OrtValue View(int first, int rows)
    {
        long[] shape = [rows, .. _rowShape];
        var bytes = (long)rows * RowLength * Marshal.SizeOf<T>();
        return OrtValue.CreateTensorValueWithData(OrtMemoryInfo.DefaultInstance, ElementType, shape,
            Marshal.UnsafeAddrOfPinnedArrayElement(_data, first * RowLength), bytes);
    }

    private static TensorElementType ElementType => typeof(T) switch
    {
        var t when t == typeof(float) => TensorElementType.Float,
        var t when t == typeof(long) => TensorElementType.Int64,
        var t when t == typeof(int) => TensorElementType.Int32,
        var t => throw new NotSupportedException($"no ONNX element type for {t}"),
    };

    public void Dispose()
    {
        foreach (var v in _prefixViews) v?.Dispose();
        foreach (var v in _rowViews) v?.Dispose();
    }
}
