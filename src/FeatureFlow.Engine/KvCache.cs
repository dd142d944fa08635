using FeatureFlow.Models;
using Microsoft.ML.OnnxRuntime;

namespace FeatureFlow.Engine;

/// <summary>
/// The KV cache of the batched graph: per layer one preallocated [rows, kv_heads, capacity, head_size] buffer
/// for keys and one for values, bound as GroupQueryAttention's past and present at once, so new positions are
/// written in place (no per-step concatenation, no per-step allocation). Running rows occupy slots 0..n−1, and
/// a decode step binds that prefix as one tensor; a row that leaves is filled by the last row
/// (<see cref="Move"/>), so the prefix stays dense.
/// </summary>
/// <remarks>
/// Memory is rows × capacity tokens whatever requests ask for (stories260K at 64 rows: 40 MB). The token
/// budget is the admission limit: each row reserves prompt + max_tokens when it joins and returns them when it
/// leaves, so a budget smaller than rows × capacity admits many short requests but few long ones.
/// </remarks>
public sealed class KvCache : IDisposable
{
    private readonly RowTensor<float>[] _buffers; // [k0, v0, k1, v1, …]
    private readonly OrtValue[]?[] _prefixes;
    private readonly OrtValue[]?[] _rows;
    private readonly int[] _lengths;
    private readonly int _kvHeads, _headSize;

    public KvCache(ModelArchitecture arch, int rows, long tokenBudget)
    {
        if (rows < 1) throw new ArgumentOutOfRangeException(nameof(rows), "the cache needs at least one row");
        Capacity = arch.ContextLength;
        if (tokenBudget < Capacity)
            throw new ArgumentOutOfRangeException(nameof(tokenBudget), $"a budget of {tokenBudget} tokens cannot hold one full-context row ({Capacity})");
        Rows = rows;
        TokenBudget = tokenBudget;
        (_kvHeads, _headSize) = (arch.KvHeads, arch.HeadSize);
        _buffers = Enumerable.Range(0, 2 * arch.Layers).Select(_ => new RowTensor<float>(rows, arch.KvHeads, Capacity, arch.HeadSize)).ToArray();
        _prefixes = new OrtValue[rows + 1][];
        _rows = new OrtValue[rows][];
        _lengths = new int[rows];
    }

    public int Rows { get; }
    /// <summary>Tokens one row can hold (the context length).</summary>
    public int Capacity { get; }
    public long TokenBudget { get; }
    public long TokensReserved { get; private set; }

    /// <summary>Tokens the row in <paramref name="slot"/> holds.</summary>
    public int Length(int slot) => _lengths[slot];

    /// <summary>Tokens the first <paramref name="rows"/> rows hold together (what is used, not what is reserved).</summary>
    public long TokensInUse(int rows)
    {
        long sum = 0;
        for (var i = 0; i < rows; i++) sum += _lengths[i];
        return sum;
    }

    /// <summary>Reserves room for a row that will hold at most <paramref name="tokens"/>; false when the budget is spent.</summary>
    public bool TryReserve(int tokens)
    {
        if (TokensReserved + tokens > TokenBudget) return false;
        TokensReserved += tokens;
        return true;
    }

    public void Release(int tokens) => TokensReserved -= tokens;

    /// <summary>A new occupant starts empty; stale values past a row's length are never read.</summary>
    public void Reset(int slot) => _lengths[slot] = 0;

    public void Advance(int slot, int tokens)
    {
        if (_lengths[slot] + tokens > Capacity)
            throw new InvalidOperationException($"row {slot} would hold {_lengths[slot] + tokens} tokens; its capacity is {Capacity}");
        _lengths[slot] += tokens;
    }

    /// <summary>Moves a row's cached positions (only those in use) to another slot.</summary>
    public void Move(int from, int to)
    {
        var used = _lengths[from] * _headSize;
        var headFloats = Capacity * _headSize;
        foreach (var buffer in _buffers)
            for (var h = 0; h < _kvHeads; h++)
                buffer.Row(from).Slice(h * headFloats, used).CopyTo(buffer.Row(to).Slice(h * headFloats, used));
        _lengths[to] = _lengths[from];
        _lengths[from] = 0;
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
