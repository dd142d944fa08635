using System.Numerics.Tensors;
using System.Threading.Channels;
using FeatureFlow.Models.Tokenization;
using FeatureFlow.Steering;

namespace FeatureFlow.Engine;

/// <summary>
/// One request's life in the engine: its compiled steering, its own sampler and RNG, its text stream with stop
/// strings, and the log its tokens go out through. Only the scheduler's loop thread touches it, except
/// <see cref="Cancel"/> and the reader of <see cref="Events"/>.
/// </summary>
/// <remarks>
/// A token costs the loop no allocation: it is recorded as a <see cref="TokenEvent"/> in a log and a text buffer
/// made at submission (both grow by doubling past that), and the reader builds the <see cref="GenerationUpdate"/>s
/// on its own thread. The log is unbounded in effect (max_tokens + 1 entries at most), so a slow reader never holds
/// up the batch.
/// </remarks>
internal sealed class Sequence
{
    // Up to this many tokens and characters per token, the log and the text buffer never grow.
    private const int InitialLogCapacity = 1024, MaxInitialCharsPerToken = 16;
    private readonly Sampler _sampler;
    private readonly TextStream _text;
    private readonly ITokenizer _tokenizer;
    private readonly float[] _scratch;
    // A wake-up for the reader, not a queue: one pending signal is enough, more are dropped. Waking a reader through a
    // channel costs the loop nothing (its waiters are reusable thread-pool work items; a Task's continuation is not).
    private readonly Channel<bool> _published = Channel.CreateBounded<bool>(new BoundedChannelOptions(1)
    {
        FullMode = BoundedChannelFullMode.DropWrite,
        SingleReader = true,
        SingleWriter = true,
    });
    private TokenEvent[] _log;
    private int _logged;
    private volatile bool _cancelled, _complete;
    private Exception? _error;
    // Why Accept ended the row, reported when the scheduler has freed it.
    private Exception? _failure;

    public Sequence(long id, GenerationRequest request, SteeringPlan plan, ITokenizer tokenizer, int longestPieceBytes,
        int vocab, int dModel)
    {
        Id = id;
        Request = request;
        Plan = plan;
        _tokenizer = tokenizer;
        _sampler = new Sampler(request.Sampling);
        var tokens = Math.Min(request.MaxTokens, InitialLogCapacity);
        // A UTF-8 byte decodes to at most one character, so a token's bytes bound the characters it adds.
        _text = new TextStream(tokenizer, request.PromptIds[^1], request.Stop,
            tokens * Math.Min(longestPieceBytes, MaxInitialCharsPerToken) + 4);
        _log = new TokenEvent[tokens + 1];
        _scratch = new float[vocab];
        ReadoutValues = new float[request.Readout.Count * dModel];
    }

    /// <summary>This step's values of the request's read-out sites, [sites × d], filled by the scheduler.</summary>
    public float[] ReadoutValues { get; }
    /// <summary>The row counts among its sites' readers (from its join until it retires).</summary>
    public bool ReadoutJoined { get; set; }

    public long Id { get; }
    public GenerationRequest Request { get; }
    public SteeringPlan Plan { get; }
    /// <summary>KV tokens the row may come to hold.</summary>
    public int Reserved => Request.PromptIds.Length + Request.MaxTokens;
    public int Completion { get; private set; }
    public int DecodeSteps { get; set; }
    public int NextToken { get; private set; }
    public FinishReason? Finish { get; private set; }
    public bool IsCancelled => _cancelled;
    /// <summary>The log has its last entry: finished, cancelled or failed (<see cref="Error"/>).</summary>
    public bool IsComplete => _complete;
    /// <summary>
    /// Why the generation failed, once <see cref="IsComplete"/>; null when it ended normally or was cancelled.
    /// </summary>
    public Exception? Error => Volatile.Read(ref _error);
    /// <summary>When the request was queued, and when its latest token was sampled (Stopwatch timestamps).</summary>
    public long SubmittedAt { get; } = System.Diagnostics.Stopwatch.GetTimestamp();
    public long LastTokenAt { get; set; }

    /// <summary>Waits until an entry may have been logged or the log completed since the previous wait.</summary>
    public ValueTask<bool> WaitForEntriesAsync() =>
        _published.Reader.TryRead(out _) ? ValueTask.FromResult(true) : _published.Reader.WaitToReadAsync();

    /// <summary>
    /// The entries logged so far. Entries below the count never change, and the array read after the count holds
    /// them all (the loop publishes a grown array before the count that needs it).
    /// </summary>
    public ReadOnlySpan<TokenEvent> Events
    {
        get
        {
            var count = Volatile.Read(ref _logged);
            return Volatile.Read(ref _log).AsSpan(0, count);
        }
    }

    public void Cancel() => _cancelled = true;

    /// <summary>
    /// Samples the next token from this row's logits and logs what became final. Returns true when the
    /// sequence has finished (BOS/EOS, a stop string or max_tokens); otherwise <see cref="NextToken"/> is its
    /// input for the next step.
    /// </summary>
    public bool Accept(ReadOnlySpan<float> logits)
    {
        var logSumExp = LogSumExp(logits, _scratch);
        // Never sample from non-finite logits: the row ends with an error that names the token; others go on.
        if (!float.IsFinite(logSumExp))
        {
            Finish = FinishReason.Error;
            _failure = new GenerationFailedException(
                $"generation stopped after {Completion} tokens: the logits became non-finite (the steering drove the "
                + "activations out of range)", "non_finite_logits");
            return true;
        }
        // The sampler works in place on a copy: the log-probability is of the model's own distribution.
        logits.CopyTo(_scratch);
        var next = _sampler.Sample(_scratch);
        var logProb = logits[next] - logSumExp;
        if (next == _tokenizer.BosId || next == _tokenizer.EosId)
        {
            _text.Flush();
            return End(FinishReason.Stop, new TokenEvent(-1, 0f, _text.Buffer, _text.FinalLength, FinishReason.Stop));
        }
        Completion++;
        NextToken = next;
        _text.Push(next);
        // Read-out values and alternatives are the request's payload: copied per token only when asked for.
        var sites = ReadoutValues.Length == 0 ? null : (float[])ReadoutValues.Clone();
        var top = Request.TopLogProbs == 0 ? null : Top(logits, logSumExp, Request.TopLogProbs);
        FinishReason? finish = _text.Stopped ? FinishReason.Stop
            : Completion == Request.MaxTokens ? FinishReason.Length : null;
        if (finish == FinishReason.Length) _text.Flush();
        var entry = new TokenEvent(next, logProb, _text.Buffer, _text.FinalLength, finish, sites, top);
        if (finish is { } reason) return End(reason, entry);
        Log(entry);
        return false;
    }

    /// <summary>
    /// Logs the last entry; the log completes when the scheduler has freed the row (<see cref="Abort"/>), so that a
    /// reader who sees the stream end sees its row and KV free.
    /// </summary>
    private bool End(FinishReason reason, TokenEvent last)
    {
        Finish = reason;
        Log(last);
        return true;
    }

    /// <summary>
    /// Completes the log: after its last entry, without one (cancelled), or with an error the reader will see.
    /// </summary>
    public void Abort(FinishReason reason, Exception? error = null)
    {
        if (_complete) return;
        Finish = reason;
        Complete(error ?? _failure);
    }

    private void Log(TokenEvent entry)
    {
        if (_logged == _log.Length)
        {
            var grown = new TokenEvent[Math.Min(2 * _log.Length, Request.MaxTokens + 1)];
            _log.CopyTo(grown, 0);
            Volatile.Write(ref _log, grown);
        }
        _log[_logged] = entry;
        Volatile.Write(ref _logged, _logged + 1);
        _published.Writer.TryWrite(true);
    }

    private void Complete(Exception? error)
    {
        Volatile.Write(ref _error, error);
        _complete = true;
        _published.Writer.TryWrite(true);
    }

    public GenerationRecord Record() => new(Id, Request.PromptIds.Length, Completion, DecodeSteps, Finish ?? FinishReason.Cancelled);

    private static TokenLogProb[] Top(ReadOnlySpan<float> logits, float logSumExp, int count)
    {
        var best = new TokenLogProb[Math.Min(count, logits.Length)];
        var filled = 0;
        for (var i = 0; i < logits.Length; i++)
        {
            var candidate = new TokenLogProb(i, logits[i] - logSumExp);
            if (filled == best.Length && !(candidate.LogProb > best[^1].LogProb)) continue;
            var at = filled < best.Length ? filled++ : best.Length - 1;
            while (at > 0 && candidate.LogProb > best[at - 1].LogProb)
            {
                best[at] = best[at - 1];
                at--;
            }
            best[at] = candidate;
        }
        return best;
    }

    /// <summary>log Σ exp(logits), vectorised; a function of the row alone, so batching cannot change it.</summary>
    private static float LogSumExp(ReadOnlySpan<float> logits, Span<float> scratch)
    {
        var max = TensorPrimitives.Max(logits);
        TensorPrimitives.Subtract(logits, max, scratch);
        TensorPrimitives.Exp(scratch, scratch);
        return max + MathF.Log(TensorPrimitives.Sum(scratch));
    }
}
