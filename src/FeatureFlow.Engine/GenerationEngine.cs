using System.Runtime.CompilerServices;
using System.Runtime.ExceptionServices;
using FeatureFlow.Models;
using FeatureFlow.Models.Folder;
using FeatureFlow.Models.Tokenization;
using FeatureFlow.Steering;

namespace FeatureFlow.Engine;

/// <summary>
/// Serves one model folder. A request is validated and its steering compiled here, once and before it is queued,
/// so a bad request never reaches the scheduler; the scheduler's loop then runs it as one row of a batch.
/// </summary>
public sealed class GenerationEngine : IDisposable
{
    private readonly Scheduler _scheduler;
    private readonly Lazy<SequenceScorer> _scorer;
    // The folder's weights file mapped once, with one container of packed weights, for every session over its graphs.
    private readonly SharedWeights? _weights;
    private long _nextId;

    public GenerationEngine(ModelFolder folder, EngineOptions options)
    {
        options.Validate();
        Folder = folder;
        Options = options;
        Tokenizer = folder.LoadTokenizer();
        LongestPieceBytes = Tokenizer.LongestPieceBytes();
        string?[] graphs = [folder.BatchedGraphPath, folder.BatchedPlainGraphPath, folder.HookedGraphPath, folder.PlainGraphPath];
        _weights = folder.WeightsPath is null ? null : SharedWeights.Open(graphs.OfType<string>());
        try
        {
            // Folders without the batched graph (hooked third-party graphs) are served row by row.
            Runner = folder.BatchedGraphPath is { } graph
                ? new ModelRunner(graph, folder.BatchedPlainGraphPath, folder.Manifest.Architecture, options, _weights)
                : new ConcatModelRunner(folder.HookedGraphPath, folder.PlainGraphPath, folder.Manifest.Architecture,
                    options, _weights);
        }
        catch
        {
            _weights?.Dispose();
            throw;
        }
        Compiler = new SteeringCompiler(Runner.SteeringShape);
        _scheduler = new Scheduler(Runner, options);
        _scorer = new Lazy<SequenceScorer>(() =>
            new SequenceScorer(folder.PlainGraphPath, folder.Manifest.Architecture, options, _weights));
    }

    /// <summary>How the sessions hold the weights, for the start-up log.</summary>
    public string WeightSharing => _weights is null
        ? "inline in each graph (each session holds its own copy)"
        : $"{_weights.Count} tensors ({_weights.Bytes / 1e6:F0} MB) in {Path.GetFileName(Folder.WeightsPath)}, "
            + "mapped once and packed once for every graph";

    /// <summary>Scores text under the unsteered model (loaded on first use).</summary>
    public SequenceScorer Scorer => _scorer.Value;

    public ModelFolder Folder { get; }
    public EngineOptions Options { get; }
    public ITokenizer Tokenizer { get; }
    /// <summary>The most text bytes one token stands for.</summary>
    public int LongestPieceBytes { get; }
    /// <summary>The batched graph's runner: execution provider, steering shape, KV cache. Owned by the scheduler's loop.</summary>
    public IModelRunner Runner { get; }
    public ModelArchitecture Architecture => Folder.Manifest.Architecture;
    public SteeringShape SteeringShape => Runner.SteeringShape;
    /// <summary>Checks and compiles steering for this model's graph.</summary>
    public SteeringCompiler Compiler { get; }
    public ExecutionProviderInfo Provider => Runner.Provider;

    /// <summary>Requests queued or running.</summary>
    public int ActiveGenerations => Figures() is var f ? f.QueuedRequests + f.RunningRows : 0;

    /// <summary>Raised on the scheduler's thread after each generated token: generation id and tokens so far.</summary>
    public event Action<long, int>? TokenGenerated
    {
        add => _scheduler.TokenGenerated += value;
        remove => _scheduler.TokenGenerated -= value;
    }

    /// <summary>Raised on the scheduler's thread when a generation ends, however it ends, after its row is freed.</summary>
    public event Action<GenerationRecord>? GenerationFinished
    {
        add => _scheduler.GenerationFinished += value;
        remove => _scheduler.GenerationFinished -= value;
    }

    /// <summary>Raised on the scheduler's thread after each token: first token of its request, and seconds since submission
    /// (first) or since the request's previous token — time to first token and inter-token latency.</summary>
    public event Action<bool, double>? TokenTimed
    {
        add => _scheduler.TokenTimed += value;
        remove => _scheduler.TokenTimed -= value;
    }

    public EngineFigures Figures() => _scheduler.Figures();

    /// <summary>Ends every queued and running generation with <paramref name="reason"/> (at shutdown, when the drain time is up).</summary>
    public void EndAll(Exception reason) => _scheduler.EndAll(reason);

    /// <summary>Prompt text as the model sees it: BOS, then the tokens of the text (none for empty text).</summary>
    public int[] EncodePrompt(string text) => Tokenizer.Encode(text, addBos: true);

    /// <summary>
    /// Validates and compiles <paramref name="request"/> and queues it. Throws <see cref="FieldValidationException"/>
    /// naming the bad field, or <see cref="EngineOverloadedException"/> naming the full queue's limit; either way
    /// nothing was queued.
    /// </summary>
    public Generation Submit(GenerationRequest request) => SubmitAll([request])[0];

    /// <summary>
    /// Submits requests that should run side by side (a Compare's arms): all are validated and compiled first,
    /// then queued together, or none is.
    /// </summary>
    public IReadOnlyList<Generation> SubmitAll(IReadOnlyList<GenerationRequest> requests)
    {
        var sequences = new Sequence[requests.Count];
        for (var i = 0; i < requests.Count; i++)
        {
            Validate(requests[i]);
            var plan = Compiler.Compile(requests[i].Steering);
            sequences[i] = new Sequence(Interlocked.Increment(ref _nextId), requests[i], plan, Tokenizer,
                LongestPieceBytes, Architecture.VocabSize, Architecture.DModel);
        }
        _scheduler.Enqueue(sequences);
        return sequences.Select(s => new Generation(s, _scheduler)).ToArray();
    }

    /// <summary>Submits and streams a generation; cancelling or abandoning the stream ends the row at the next step.</summary>
    public async IAsyncEnumerable<GenerationUpdate> GenerateAsync(GenerationRequest request, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        using var generation = Submit(request);
        await foreach (var update in generation.ReadAllAsync(cancellationToken).ConfigureAwait(false))
            yield return update;
    }

    /// <summary>Every request-level check, in one place; steering terms are checked by the compiler.</summary>
    private void Validate(GenerationRequest request)
    {
        request.ValidateFor(Architecture.VocabSize, Architecture.ContextLength);
        if (request.TopLogProbs is < 0 or > GenerationLimits.MaxTopLogProbs)
            throw new FieldValidationException("top_logprobs", $"must be in 0..{GenerationLimits.MaxTopLogProbs}, got {request.TopLogProbs}");
        for (var i = 0; i < request.Readout.Count; i++) Compiler.CheckSite(request.Readout[i], $"readout.hooks[{i}]");
        if (request.Readout.Distinct().Count() != request.Readout.Count) throw new FieldValidationException("readout.hooks", "a site is listed twice");
        if (request.PromptIds.Length + request.MaxTokens > Runner.Kv.TokenBudget)
            throw new FieldValidationException("max_tokens", $"prompt + max_tokens = {request.PromptIds.Length + request.MaxTokens} tokens exceed the server's KV budget ({Runner.Kv.TokenBudget})");
    }

    public void Dispose()
    {
        _scheduler.Dispose();
        Runner.Dispose();
        if (_scorer.IsValueCreated) _scorer.Value.Dispose();
        _weights?.Dispose(); // after every session that uses it
    }
}

/// <summary>
/// A queued or running generation: read its updates once with <see cref="ReadAllAsync"/>. Cancelling, or
/// disposing before it finished, ends its row at the next step and frees its KV slot.
/// </summary>
public sealed class Generation : IDisposable
{
    private readonly Sequence _sequence;
    private readonly Scheduler _scheduler;

    internal Generation(Sequence sequence, Scheduler scheduler) => (_sequence, _scheduler) = (sequence, scheduler);

    public long Id => _sequence.Id;

    /// <summary>Tokens generated so far (read from another thread: may trail the loop by a step).</summary>
    public int CompletionTokens => _sequence.Completion;

    public IAsyncEnumerable<GenerationUpdate> ReadAllAsync(CancellationToken cancellationToken = default) =>
        ReadAsync(coalesce: false, cancellationToken);

    /// <summary>
    /// As <see cref="ReadAllAsync"/>, but updates already waiting when the reader comes back are merged into one: a
    /// transport that sends a message per update then sends fewer, larger ones when it falls behind the model,
    /// instead of falling further behind. Latency is unchanged when it keeps up.
    /// </summary>
    public IAsyncEnumerable<GenerationUpdate> ReadCoalescedAsync(CancellationToken cancellationToken = default) =>
        ReadAsync(coalesce: true, cancellationToken);

    private async IAsyncEnumerable<GenerationUpdate> ReadAsync(bool coalesce, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        await using (cancellationToken.Register(Cancel).ConfigureAwait(false))
        {
            try
            {
                var read = 0;
                var reader = new UpdateReader(_sequence.Request.PromptIds.Length);
                // Read to the end even when cancelled: the loop ends the row within a step and completes the log.
                while (true)
                {
                    // Completion is read before the count: a complete log read afterwards has every entry.
                    var complete = _sequence.IsComplete;
                    var logged = _sequence.Events.Length;
                    if (read < logged)
                    {
                        var take = coalesce ? logged - read : 1;
                        yield return reader.Next(_sequence.Events.Slice(read, take));
                        read += take;
                        continue;
                    }
                    if (complete) break;
                    await _sequence.WaitForEntriesAsync().ConfigureAwait(false);
                }
                if (_sequence.Error is { } error) ExceptionDispatchInfo.Throw(error);
            }
            finally
            {
                Cancel(); // a reader that leaves early frees the row
            }
        }
        cancellationToken.ThrowIfCancellationRequested();
    }

    /// <summary>Turns the loop's entries into updates, on the reader's thread: what the loop must not allocate.</summary>
    private sealed class UpdateReader(int promptTokens)
    {
        private int _textAt, _completion;

        public GenerationUpdate Next(ReadOnlySpan<TokenEvent> entries)
        {
            var last = entries[^1];
            var text = new string(last.Text, _textAt, last.TextEnd - _textAt);
            _textAt = last.TextEnd;
            var ids = new List<int>(entries.Length);
            var logProbs = new List<float>(entries.Length);
            var sites = new List<float[]>();
            var top = new List<TokenLogProb[]>();
            foreach (var e in entries)
            {
                if (e.Token < 0) continue;
                ids.Add(e.Token);
                logProbs.Add(e.LogProb);
                if (e.SiteValues is { } values) sites.Add(values);
                if (e.TopLogProbs is { } alternatives) top.Add(alternatives);
            }
            _completion += ids.Count;
            var usage = last.Finish is null ? null : new Usage(promptTokens, _completion);
            return new GenerationUpdate(text, ids, last.Finish, usage)
            {
                LogProbs = logProbs,
                SiteValues = sites.Count == 0 ? [] : sites,
                TopLogProbs = top.Count == 0 ? [] : top,
            };
        }
    }

    public void Cancel()
    {
        if (_sequence.IsComplete) return;
        _sequence.Cancel();
        _scheduler.Wake();
    }

    public void Dispose() => Cancel();
}
