namespace FeatureFlow.Engine;

/// <summary>
/// The bookkeeping half of a KV cache, whatever holds the keys and values: how many tokens each row slot holds,
/// and the token budget rows reserve against when they join (prompt + max_tokens) and return when they leave.
/// The budget is the admission limit: smaller than rows × capacity, it admits many short requests or few long ones.
/// </summary>
public sealed class KvLedger
{
    private readonly int[] _lengths;

    public KvLedger(int rows, int capacity, long tokenBudget)
    {
        if (rows < 1) throw new ArgumentOutOfRangeException(nameof(rows), "the cache needs at least one row");
        if (tokenBudget < capacity)
            throw new ArgumentOutOfRangeException(nameof(tokenBudget), $"a budget of {tokenBudget} tokens cannot hold one full-context row ({capacity})");
        Rows = rows;
        Capacity = capacity;
        TokenBudget = tokenBudget;
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

    /// <summary>A new occupant starts empty.</summary>
    public void Reset(int slot) => _lengths[slot] = 0;

    public void Advance(int slot, int tokens)
    {
        if (_lengths[slot] + tokens > Capacity)
            throw new InvalidOperationException($"row {slot} would hold {_lengths[slot] + tokens} tokens; its capacity is {Capacity}");
        _lengths[slot] += tokens;
    }

    /// <summary>The row in <paramref name="from"/> now lives in <paramref name="to"/>; <paramref name="from"/> is empty.</summary>
    public void Move(int from, int to)
    {
        _lengths[to] = _lengths[from];
        _lengths[from] = 0;
    }
}
