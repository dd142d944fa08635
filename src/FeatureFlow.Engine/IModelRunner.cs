using FeatureFlow.Models;
using FeatureFlow.Steering;

namespace FeatureFlow.Engine;

/// <summary>
/// What the scheduler asks of a model: prefill one row's prompt into a slot, decode one token for rows 0..n−1,
/// move a row between slots. <see cref="ModelRunner"/> batches rows in one run over a shared KV buffer (our own
/// exported folders); <see cref="ConcatModelRunner"/> runs graphs whose KV cache is concatenated each step
/// (hooked third-party graphs) one row at a time.
/// </summary>
public interface IModelRunner : IDisposable
{
    ModelArchitecture Architecture { get; }
    ExecutionProviderInfo Provider { get; }
    SteeringShape SteeringShape { get; }
    /// <summary>Most rows one decode step runs.</summary>
    int Rows { get; }
    KvLedger Kv { get; }
    SteeringSlots Steering { get; }
    /// <summary>Whether the last prefill or decode step ran the graph without hooks.</summary>
    bool LastStepPlain { get; }

    /// <summary>The token the row in <paramref name="slot"/> feeds at the next decode step.</summary>
    void SetNextToken(int slot, int token);

    /// <summary>Moves everything a row owns (KV, steering, next token) into another slot.</summary>
    void Move(int from, int to);

    /// <summary>
    /// Runs a whole prompt for the row in <paramref name="slot"/> (its KV starts empty) and returns the logits of
    /// its last position; the values of the <paramref name="readout"/> sites there go to
    /// <paramref name="readoutValues"/> ([sites × d]). The span is valid until the next prefill.
    /// </summary>
    ReadOnlySpan<float> Prefill(int slot, ReadOnlySpan<int> prompt, IReadOnlyList<Site> readout, Span<float> readoutValues);

    /// <summary>
    /// One decode step for rows 0..<paramref name="rows"/>−1, reading out every site whose
    /// <paramref name="siteReaders"/> count is positive. Returns logits [rows, vocab], valid until the next step.
    /// </summary>
    ReadOnlySpan<float> Decode(int rows, ReadOnlySpan<int> siteReaders);

    /// <summary>The value at <paramref name="site"/> of the row in <paramref name="slot"/> from the last decode step.</summary>
    ReadOnlySpan<float> SiteValue(Site site, int slot);
}
