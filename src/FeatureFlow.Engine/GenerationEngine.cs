using System.Runtime.CompilerServices;
using System.Threading.Channels;
using FeatureFlow.Models;
using FeatureFlow.Models.Folder;
using FeatureFlow.Models.Tokenization;
using FeatureFlow.Steering;

namespace FeatureFlow.Engine;

/// <summary>
/// Serves one model folder: validates and compiles requests, then runs prefill and decode with the
/// request's steering bound on every step, streaming text as it becomes final.
/// </summary>
public sealed class GenerationEngine : IDisposable
{
    private readonly SemaphoreSlim _slots;
    private readonly SteeringCompiler _compiler;
    private long _nextId;
    private int _active;

    public GenerationEngine(ModelFolder folder, EngineOptions options)
    {
        Folder = folder;
        Options = options;
        Tokenizer = folder.LoadTokenizer();
        Decoder = new HookedDecoder(folder.HookedGraphPath, folder.Manifest.Architecture, options);
        if (Decoder.SteeringShape is null) throw new InvalidDataException($"{folder.HookedGraphPath}: the graph has no steering inputs");
        _compiler = new SteeringCompiler(Decoder.SteeringShape);
        _slots = new SemaphoreSlim(options.MaxConcurrentGenerations);
    }

    public ModelFolder Folder { get; }
    public EngineOptions Options { get; }
    public ITokenizer Tokenizer { get; }
    public HookedDecoder Decoder { get; }
    public ModelArchitecture Architecture => Folder.Manifest.Architecture;
    public int ActiveGenerations => Volatile.Read(ref _active);

    /// <summary>Raised on the generating thread after each generated token: generation id and tokens so far.</summary>
    public event Action<long, int>? TokenGenerated;

    /// <summary>Raised on the generating thread when a generation ends, however it ends.</summary>
    public event Action<GenerationRecord>? GenerationFinished;

    /// <summary>Prompt text as the model sees it: BOS, then the tokens of the text (none for empty text).</summary>
    public int[] EncodePrompt(string text) => Tokenizer.Encode(text, addBos: true);

    /// <summary>Checks a request against this model; throws <see cref="FieldValidationException"/> naming the bad field.</summary>
    public SteeringPlan Prepare(GenerationRequest request)
    {
        var arch = Architecture;
        if (request.PromptIds.Length == 0) throw new FieldValidationException("prompt_token_ids", "the prompt has no tokens");
        for (var i = 0; i < request.PromptIds.Length; i++)
            if ((uint)request.PromptIds[i] >= (uint)arch.VocabSize)
                throw new FieldValidationException("prompt_token_ids", $"[{i}] = {request.PromptIds[i]} is not a token id (vocabulary 0..{arch.VocabSize - 1})");
        if (request.PromptIds.Length >= arch.ContextLength)
            throw new FieldValidationException("prompt", $"the prompt has {request.PromptIds.Length} tokens; the context length is {arch.ContextLength}");
        var room = arch.ContextLength - request.PromptIds.Length;
        if (request.MaxTokens <= 0) throw new FieldValidationException("max_tokens", $"must be positive, got {request.MaxTokens}");
        if (request.MaxTokens > room)
            throw new FieldValidationException("max_tokens", $"{request.MaxTokens} tokens after a {request.PromptIds.Length}-token prompt exceed the context length {arch.ContextLength} (at most {room})");
        var s = request.Sampling;
        if (!float.IsFinite(s.Temperature) || s.Temperature < 0f) throw new FieldValidationException("temperature", $"must be a finite number ≥ 0, got {s.Temperature}");
        if (!(s.TopP > 0f && s.TopP <= 1f)) throw new FieldValidationException("top_p", $"must be in (0, 1], got {s.TopP}");
        if (s.TopK < 0) throw new FieldValidationException("top_k", $"must be ≥ 0 (0 turns it off), got {s.TopK}");
        for (var i = 0; i < request.Stop.Count; i++)
            if (string.IsNullOrEmpty(request.Stop[i])) throw new FieldValidationException($"stop[{i}]", "stop strings must not be empty");
        return _compiler.Compile(request.Steering);
    }

    /// <summary>
    /// Streams a generation. The loop runs on a worker thread and checks <paramref name="cancellationToken"/>
    /// before every step, so a cancelled request stops computing within one step.
    /// </summary>
    public async IAsyncEnumerable<GenerationUpdate> GenerateAsync(GenerationRequest request, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var plan = Prepare(request);
        // Bounded, so a slow or departed reader holds the loop back instead of letting it run ahead.
        var channel = Channel.CreateBounded<GenerationUpdate>(new BoundedChannelOptions(Options.StreamBufferUpdates)
        {
            SingleReader = true,
            SingleWriter = true,
            FullMode = BoundedChannelFullMode.Wait,
        });
        await _slots.WaitAsync(cancellationToken).ConfigureAwait(false);
        // Also stopped when the reader abandons the stream (disposes the enumerator) without cancelling.
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var token = stop.Token;
        var worker = Task.Run(() =>
        {
            try { Run(request, plan, Emit, token); }
            finally { _slots.Release(); }
        }, CancellationToken.None);
        _ = worker.ContinueWith(t => channel.Writer.TryComplete(t.Exception?.InnerException), TaskScheduler.Default);

        try
        {
            // Read to the end even when cancelled: the worker stops within a step and completes the channel.
            await foreach (var update in channel.Reader.ReadAllAsync(CancellationToken.None).ConfigureAwait(false))
                yield return update;
        }
        finally
        {
            stop.Cancel();
            // The worker stops within a step; wait for it so nothing uses the token source after disposal.
            await worker.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        }
        cancellationToken.ThrowIfCancellationRequested();

        bool Emit(GenerationUpdate update)
        {
            try
            {
                var write = channel.Writer.WriteAsync(update, token);
                if (!write.IsCompletedSuccessfully) write.AsTask().GetAwaiter().GetResult();
                return true;
            }
            catch (OperationCanceledException)
            {
                return false;
            }
        }
    }

    /// <summary>
    /// The generation loop: prefill, then one decode step per token. <paramref name="emit"/> returns
    /// false when nobody is listening any more, which ends the loop like cancellation does.
    /// </summary>
    public GenerationRecord Run(GenerationRequest request, SteeringPlan plan, Func<GenerationUpdate, bool> emit, CancellationToken cancellationToken)
    {
        var id = Interlocked.Increment(ref _nextId);
        Interlocked.Increment(ref _active);
        var completion = 0;
        var steps = 0;
        var finish = FinishReason.Cancelled;
        try
        {
            using var state = Decoder.NewState();
            using var promptSteering = Decoder.Bind(plan.Prompt);
            using var generatedSteering = Decoder.Bind(plan.Generated);
            var sampler = new Sampler(request.Sampling);
            var text = new TextStream(Tokenizer, request.PromptIds[^1], request.Stop);
            var vocab = Architecture.VocabSize;

            if (cancellationToken.IsCancellationRequested) return Finish();
            var logits = Decoder.Forward(state, request.PromptIds, promptSteering);
            var last = logits.AsSpan((request.PromptIds.Length - 1) * vocab, vocab);
            while (true)
            {
                var next = sampler.Sample(last);
                if (next == Tokenizer.BosId || next == Tokenizer.EosId)
                {
                    finish = FinishReason.Stop;
                    emit(new GenerationUpdate(text.Flush(), [], finish, new Usage(request.PromptIds.Length, completion)));
                    return Finish();
                }
                completion++;
                TokenGenerated?.Invoke(id, completion);
                var piece = text.Push(next);
                if (text.Stopped)
                {
                    finish = FinishReason.Stop;
                    emit(new GenerationUpdate(piece, [next], finish, new Usage(request.PromptIds.Length, completion)));
                    return Finish();
                }
                if (completion == request.MaxTokens)
                {
                    finish = FinishReason.Length;
                    emit(new GenerationUpdate(piece + text.Flush(), [next], finish, new Usage(request.PromptIds.Length, completion)));
                    return Finish();
                }
                if (!emit(new GenerationUpdate(piece, [next])) || cancellationToken.IsCancellationRequested) return Finish();
                last = Decoder.Forward(state, [next], generatedSteering);
                steps++;
            }
        }
        finally
        {
            Interlocked.Decrement(ref _active);
        }

        GenerationRecord Finish()
        {
            var record = new GenerationRecord(id, request.PromptIds.Length, completion, steps, finish);
            GenerationFinished?.Invoke(record);
            return record;
        }
    }

    public void Dispose()
    {
        Decoder.Dispose();
        _slots.Dispose();
    }
}
