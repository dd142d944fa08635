using System.Numerics.Tensors;
using System.Threading.Channels;
using FeatureFlow.Models.Tokenization;
using FeatureFlow.Steering;

namespace FeatureFlow.Engine;

/// <summary>
/// One request's life in the engine: its compiled steering, its own sampler and RNG, its text stream with stop
/// strings, and the channel its updates go out on. Only the scheduler's loop thread touches it, except
/// <see cref="Cancel"/> and the reader of <see cref="Output"/>.
/// </summary>
internal sealed class Sequence
{
    private readonly Sampler _sampler;
    private readonly TextStream _text;
    private readonly ITokenizer _tokenizer;
    private readonly float[] _scratch;
    private volatile bool _cancelled;

    public Sequence(long id, GenerationRequest request, SteeringPlan plan, ITokenizer tokenizer, int vocab, int dModel)
    {
        Id = id;
        Request = request;
        Plan = plan;
        _tokenizer = tokenizer;
        _sampler = new Sampler(request.Sampling);
        _text = new TextStream(tokenizer, request.PromptIds[^1], request.Stop);
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
    /// <summary>Unbounded: a sequence writes at most max_tokens updates, so a slow reader never holds up the batch.</summary>
    public Channel<GenerationUpdate> Output { get; } = Channel.CreateUnbounded<GenerationUpdate>(new UnboundedChannelOptions
    {
        SingleReader = true,
        SingleWriter = true,
    });
    /// <summary>KV tokens the row may come to hold.</summary>
    public int Reserved => Request.PromptIds.Length + Request.MaxTokens;
    public int Completion { get; private set; }
    public int DecodeSteps { get; set; }
    public int NextToken { get; private set; }
    public FinishReason? Finish { get; private set; }
    public bool IsCancelled => _cancelled;
    /// <summary>When the request was queued, and when its latest token was sampled (Stopwatch timestamps).</summary>
    public long SubmittedAt { get; } = System.Diagnostics.Stopwatch.GetTimestamp();
    public long LastTokenAt { get; set; }

    public void Cancel() => _cancelled = true;

    /// <summary>
    /// Samples the next token from this row's logits and streams what became final. Returns true when the
    /// sequence has finished (BOS/EOS, a stop string or max_tokens); otherwise <see cref="NextToken"/> is its
    /// input for the next step.
    /// </summary>
    public bool Accept(ReadOnlySpan<float> logits)
    {
        var logSumExp = LogSumExp(logits, _scratch);
        // Never sample from non-finite logits: the row ends with an error that names the token; others go on.
        if (!float.IsFinite(logSumExp))
        {
            Abort(FinishReason.Error, new GenerationFailedException(
                $"generation stopped after {Completion} tokens: the logits became non-finite (the steering drove the activations out of range)", "non_finite_logits"));
            return true;
        }
        // The sampler works in place on a copy: the log-probability is of the model's own distribution.
        logits.CopyTo(_scratch);
        var next = _sampler.Sample(_scratch);
        var logProb = logits[next] - logSumExp;
        if (next == _tokenizer.BosId || next == _tokenizer.EosId)
            return End(FinishReason.Stop, new GenerationUpdate(_text.Flush(), [], FinishReason.Stop, Usage()));
        Completion++;
        NextToken = next;
        var piece = _text.Push(next);
        IReadOnlyList<float[]> sites = ReadoutValues.Length == 0 ? [] : [(float[])ReadoutValues.Clone()];
        IReadOnlyList<TokenLogProb[]> top = Request.TopLogProbs == 0 ? [] : [Top(logits, logSumExp, Request.TopLogProbs)];
        if (_text.Stopped)
            return End(FinishReason.Stop, new GenerationUpdate(piece, [next], FinishReason.Stop, Usage()) { LogProbs = [logProb], SiteValues = sites, TopLogProbs = top });
        if (Completion == Request.MaxTokens)
        {
            piece += _text.Flush();
            return End(FinishReason.Length, new GenerationUpdate(piece, [next], FinishReason.Length, Usage())
                { LogProbs = [logProb], SiteValues = sites, TopLogProbs = top });
        }
        Output.Writer.TryWrite(new GenerationUpdate(piece, [next]) { LogProbs = [logProb], SiteValues = sites, TopLogProbs = top });
        return false;
    }

    private bool End(FinishReason reason, GenerationUpdate last)
    {
        Finish = reason;
        Output.Writer.TryWrite(last);
        return true;
    }

    /// <summary>Ends the stream without a final update (cancelled) or with an error the reader will see.</summary>
    public void Abort(FinishReason reason, Exception? error = null)
    {
        Finish = reason;
        Output.Writer.TryComplete(error);
    }

    private Usage Usage() => new(Request.PromptIds.Length, Completion);

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
