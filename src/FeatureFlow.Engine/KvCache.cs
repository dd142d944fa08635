using FeatureFlow.Models;
using Microsoft.ML.OnnxRuntime;

namespace FeatureFlow.Engine;

/// <summary>
/// The KV cache of the batched graph: per layer one preallocated [rows, kv_heads, capacity, head_size] buffer
/// for keys and one for values, bound as GroupQueryAttention's past and present at once, so new positions are
/// written in place (no per-step concatenation, no per-step allocation). Running rows occupy slots 0..n−1, and
/// a decode step binds that prefix as one tensor; a row that leaves is filled by the last row
/// (<see cref="Move"/>), so the prefix stays dense. <see cref="Ledger"/> keeps the lengths and the token budget.
/// </summary>
/// <remarks>Memory is rows × capacity tokens whatever requests ask for (stories260K at 64 rows: 40 MB).</remarks>
public sealed class KvCache : IDisposable
{
    private readonly RowTensor<float>[] _buffers; // [k0, v0, k1, v1, …]
    private readonly OrtValue[]?[] _prefixes;
    private readonly OrtValue[]?[] _rows;
    private readonly int _kvHeads, _headSize;

    public KvCache(ModelArchitecture arch, int rows, long tokenBudget)
    {
        Ledger = new KvLedger(rows, arch.ContextLength, tokenBudget);
        (_kvHeads, _headSize) = (arch.KvHeads, arch.HeadSize);
        _buffers = Enumerable.Range(0, 2 * arch.Layers)
            .Select(_ => new RowTensor<float>(rows, arch.KvHeads, arch.ContextLength, arch.HeadSize)).ToArray();
        _prefixes = new OrtValue[rows + 1][];
        _rows = new OrtValue[rows][];
    }

    public KvLedger Ledger { get; }

    /// <summary>Moves a row's cached positions (only those in use) to another slot.</summary>
    public void Move(int from, int to)
    {
        var used = Ledger.Length(from) * _headSize;
        var headFloats = Ledger.Capacity * _headSize;
        foreach (var buffer in _buffers)
            for (var h = 0; h < _kvHeads; h++)
                buffer.Row(from).Slice(h * headFloats, used).CopyTo(buffer.Row(to).Slice(h * headFloats, used));
        Ledger.Move(from, to);
    }

    /// <summary>Keys and values of rows 0..<paramref name="rows"/>−1 per layer, [k0, v0, k1, v1, …].</summary>
    public OrtValue[] Prefix(int rows) => _prefixes[rows] ??= _buffers.Select(b => b.Prefix(rows)).ToArray();

    /// <summary>Keys and values of the row in <paramref name="slot"/> per layer.</summary>
    public OrtValue[] Row(int slot) => _rows[slot] ??= _buffers.Select(b => b.RowValue(slot)).ToArray();

    public void Dispose()
    {
        foreach (var b in _buffers) b.Dispose();
    }
}
