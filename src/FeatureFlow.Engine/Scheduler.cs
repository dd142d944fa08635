using System.Diagnostics;

namespace FeatureFlow.Engine;

/// <summary>
/// The one loop that owns the model. Between steps it retires finished and cancelled rows (freeing their KV slot
/// at once), admits waiting requests while rows and KV budget allow and prefills each into its slot, then runs
/// one decode step for every running row.
/// </summary>
/// <remarks>
/// Prefill and decode are separate steps: a prefill runs one request's whole prompt in its own slot (batch 1),
/// then the row joins the next decode step. That keeps every kernel shape a function of the row alone, which is
/// what makes a row's logits bit-identical to its solo run, and prompts on this scale cost about one decode step.
/// <see cref="EngineOptions.MaxPrefillTokensPerStep"/> bounds how long a burst of arrivals stalls running rows.
/// </remarks>
internal sealed class Scheduler : IDisposable
{
    private readonly IModelRunner _runner;
    private readonly EngineOptions _options;
    private readonly int _vocab;
    private readonly object _lock = new();
    private readonly LinkedList<Sequence> _waiting = new();
    private readonly List<Sequence> _running = [];
    private readonly List<int> _finished = [];
    private readonly List<Sequence> _dropped = [];
    // Running rows that read each site out: the runner binds a site's output while its count is positive.
    private readonly int[] _siteReaders;
    private readonly SemaphoreSlim _wake = new(0);
    private readonly Thread _thread;
    private long _queuedTokens;
    private volatile bool _stopping;
    private Exception? _endAll;
    private long _prefillSteps, _decodeSteps, _plainPrefillSteps, _plainDecodeSteps, _decodeRows, _generated;
    private long _decodeAllocated, _decodeTicks, _loopTicks;
    private int _runningRows;
    private long _kvReserved, _kvInUse;
    private double _tokensPerSecond = 100; // refined from measured steps; only used for retry-after estimates

    public Scheduler(IModelRunner runner, EngineOptions options)
    {
        _runner = runner;
        _options = options;
        _vocab = runner.Architecture.VocabSize;
        _siteReaders = new int[runner.SteeringShape.Sites];
        _thread = new Thread(Loop) { IsBackground = true, Name = "featureflow-scheduler" };
        _thread.Start();
    }

    public event Action<long, int>? TokenGenerated;
    public event Action<GenerationRecord>? GenerationFinished;
    /// <summary>After each token: whether it is the request's first, and the seconds since submission or the previous token.</summary>
    public event Action<bool, double>? TokenTimed;

    /// <summary>Queues sequences together (a Compare's arms): all of them, or none when a limit would be passed.</summary>
    public void Enqueue(IReadOnlyList<Sequence> sequences)
    {
        var tokens = sequences.Sum(s => (long)s.Reserved);
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_stopping, this);
            if (_waiting.Count + sequences.Count > _options.MaxQueuedRequests)
                throw Overloaded("max_queued_requests",
                    $"{_waiting.Count} requests are waiting and {sequences.Count} more would pass max_queued_requests ({_options.MaxQueuedRequests})");
            if (_queuedTokens + tokens > _options.MaxQueuedTokens)
                throw Overloaded("max_queued_tokens",
                    $"waiting requests hold {_queuedTokens} tokens (prompt + max_tokens); {tokens} more would pass max_queued_tokens ({_options.MaxQueuedTokens})");
            foreach (var s in sequences) _waiting.AddLast(s);
            _queuedTokens += tokens;
        }
        _wake.Release();
    }

    private EngineOverloadedException Overloaded(string limit, string reason)
    {
        var seconds = Math.Clamp((_queuedTokens + _kvReserved) / Math.Max(1, _tokensPerSecond), 1, 600);
        var retry = TimeSpan.FromSeconds(Math.Ceiling(seconds));
        return new EngineOverloadedException(limit, $"the server is busy: {reason}; retry in about {retry.TotalSeconds:0} s", retry);
    }

    /// <summary>Ends every queued and running generation with <paramref name="reason"/> before the next step.</summary>
    public void EndAll(Exception reason)
    {
        Volatile.Write(ref _endAll, reason);
        _wake.Release();
    }

    private void EndAllNow(Exception reason)
    {
        for (var i = _running.Count - 1; i >= 0; i--)
        {
            _running[i].Abort(FinishReason.Cancelled, reason);
            Retire(i);
        }
        lock (_lock)
        {
            foreach (var s in _waiting) s.Abort(FinishReason.Cancelled, reason);
            _dropped.Clear();
            _dropped.AddRange(_waiting);
            _waiting.Clear();
            _queuedTokens = 0;
        }
        foreach (var s in _dropped) End(s, FinishReason.Cancelled);
    }

    /// <summary>Makes the loop look again (a queued request was cancelled, or shutdown).</summary>
    public void Wake() => _wake.Release();

    public EngineFigures Figures()
    {
        int queued;
        long queuedTokens;
        lock (_lock) (queued, queuedTokens) = (_waiting.Count, _queuedTokens);
        return new EngineFigures
        {
            QueuedRequests = queued,
            QueuedTokens = queuedTokens,
            RunningRows = Volatile.Read(ref _runningRows),
            KvTokensReserved = Volatile.Read(ref _kvReserved),
            KvTokensInUse = Volatile.Read(ref _kvInUse),
            KvTokenBudget = _runner.Kv.TokenBudget,
            PrefillSteps = Volatile.Read(ref _prefillSteps),
            DecodeSteps = Volatile.Read(ref _decodeSteps),
            PlainPrefillSteps = Volatile.Read(ref _plainPrefillSteps),
            PlainDecodeSteps = Volatile.Read(ref _plainDecodeSteps),
            DecodeRows = Volatile.Read(ref _decodeRows),
            GeneratedTokens = Volatile.Read(ref _generated),
            DecodeAllocatedBytes = Volatile.Read(ref _decodeAllocated),
            DecodeModelSeconds = Volatile.Read(ref _decodeTicks) / (double)Stopwatch.Frequency,
            DecodeStepSeconds = Volatile.Read(ref _loopTicks) / (double)Stopwatch.Frequency,
        };
    }

    private void Loop()
    {
        while (!_stopping)
        {
            if (Interlocked.Exchange(ref _endAll, null) is { } reason) EndAllNow(reason);
            RetireCancelled();
            Admit();
            if (_running.Count > 0) Decode();
            Publish();
            if (_running.Count == 0 && !_stopping) _wake.Wait();
        }
        foreach (var s in _running) s.Abort(FinishReason.Cancelled, new ObjectDisposedException(nameof(GenerationEngine), "the engine shut down"));
        lock (_lock)
            foreach (var s in _waiting) s.Abort(FinishReason.Cancelled, new ObjectDisposedException(nameof(GenerationEngine), "the engine shut down"));
    }

    /// <summary>Drops cancelled requests from the queue and prefills waiting ones while rows, budget and the step's prefill share allow.</summary>
    private void Admit()
    {
        var prefilled = 0;
        while (true)
        {
            Sequence? next = null;
            _dropped.Clear();
            lock (_lock)
            {
                for (var node = _waiting.First; node is not null;)
                {
                    var after = node.Next;
                    if (node.Value.IsCancelled)
                    {
                        _waiting.Remove(node);
                        _queuedTokens -= node.Value.Reserved;
                        _dropped.Add(node.Value);
                    }
                    node = after;
                }
                if (_waiting.First?.Value is { } head && _running.Count < _runner.Rows
                    && (prefilled == 0 || prefilled + head.Request.PromptIds.Length <= _options.MaxPrefillTokensPerStep)
                    && _runner.Kv.TryReserve(head.Reserved))
                {
                    _waiting.RemoveFirst();
                    _queuedTokens -= head.Reserved;
                    next = head;
                }
            }
            foreach (var s in _dropped) End(s, FinishReason.Cancelled);
            if (next is null) return;
            prefilled += next.Request.PromptIds.Length;
            Join(next);
        }
    }

    private void Join(Sequence sequence)
    {
        var slot = _running.Count;
        _running.Add(sequence);
        bool finished;
        try
        {
            foreach (var site in sequence.Request.Readout) _siteReaders[site.Index]++;
            sequence.ReadoutJoined = true;
            _runner.Steering.Write(slot, sequence.Plan.Prompt);
            var logits = _runner.Prefill(slot, sequence.Request.PromptIds, sequence.Request.Readout, sequence.ReadoutValues);
            _prefillSteps++;
            if (_runner.LastStepPlain) _plainPrefillSteps++;
            // Generated-only and prompt-only terms switch here, once, for the rest of the generation.
            if (!ReferenceEquals(sequence.Plan.Generated, sequence.Plan.Prompt)) _runner.Steering.Write(slot, sequence.Plan.Generated);
            finished = Accept(sequence, logits);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            sequence.Abort(FinishReason.Cancelled, e);
            finished = true;
        }
        if (finished) Retire(slot);
        else _runner.SetNextToken(slot, sequence.NextToken);
    }

    private void Decode()
    {
        var rows = _running.Count;
        var started = Stopwatch.GetTimestamp();
        var allocated = GC.GetAllocatedBytesForCurrentThread();
        ReadOnlySpan<float> logits;
        try
        {
            logits = _runner.Decode(rows, _siteReaders);
            _decodeTicks += Stopwatch.GetTimestamp() - started;
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // A failed step has no trustworthy KV for any row: end them all with the error, keep serving.
            for (var i = rows - 1; i >= 0; i--)
            {
                _running[i].Abort(FinishReason.Cancelled, e);
                Retire(i);
            }
            return;
        }
        _decodeSteps++;
        if (_runner.LastStepPlain) _plainDecodeSteps++;
        _decodeRows += rows;
        _finished.Clear();
        for (var i = 0; i < rows; i++)
        {
            var s = _running[i];
            s.DecodeSteps++;
            var readout = s.Request.Readout;
            for (var j = 0; j < readout.Count; j++)
                _runner.SiteValue(readout[j], i).CopyTo(s.ReadoutValues.AsSpan(j * _runner.Architecture.DModel));
            if (Accept(s, logits.Slice(i * _vocab, _vocab))) _finished.Add(i);
            else _runner.SetNextToken(i, s.NextToken);
        }
        // Highest slot first: the last row, which fills a freed slot, is then never one that is leaving too.
        for (var j = _finished.Count - 1; j >= 0; j--) Retire(_finished[j]);
        _decodeAllocated += GC.GetAllocatedBytesForCurrentThread() - allocated;
        var elapsed = Stopwatch.GetTimestamp() - started;
        _loopTicks += elapsed;
        var seconds = Stopwatch.GetElapsedTime(started).TotalSeconds;
        if (seconds > 0) _tokensPerSecond = 0.9 * _tokensPerSecond + 0.1 * (rows / seconds);
    }

    /// <summary>Cancelled or abandoned rows leave before the next step computes anything for them.</summary>
    private void RetireCancelled()
    {
        for (var i = _running.Count - 1; i >= 0; i--)
            if (_running[i].IsCancelled) Retire(i);
    }

    private bool Accept(Sequence s, ReadOnlySpan<float> logits)
    {
        var before = s.Completion;
        var finished = s.Accept(logits);
        if (s.Completion != before)
        {
            _generated++;
            var now = Stopwatch.GetTimestamp();
            var first = s.LastTokenAt == 0;
            TokenTimed?.Invoke(first, Stopwatch.GetElapsedTime(first ? s.SubmittedAt : s.LastTokenAt, now).TotalSeconds);
            s.LastTokenAt = now;
            TokenGenerated?.Invoke(s.Id, s.Completion);
        }
        return finished;
    }

    /// <summary>Ends the row in <paramref name="slot"/>: its slot and KV reservation are free before the next step.</summary>
    private void Retire(int slot)
    {
        var s = _running[slot];
        var last = _running.Count - 1;
        if (slot != last)
        {
            _runner.Move(last, slot);
            _running[slot] = _running[last];
        }
        _running.RemoveAt(last);
        _runner.Kv.Release(s.Reserved);
        if (s.ReadoutJoined)
            foreach (var site in s.Request.Readout) _siteReaders[site.Index]--;
        Publish(); // whoever hears that the generation ended sees its row and KV already free
        End(s, s.Finish ?? FinishReason.Cancelled);
    }

    private void End(Sequence s, FinishReason reason)
    {
        s.Abort(reason);
        GenerationFinished?.Invoke(s.Record());
    }

    private void Publish()
    {
        Volatile.Write(ref _runningRows, _running.Count);
        Volatile.Write(ref _kvReserved, _runner.Kv.TokensReserved);
        Volatile.Write(ref _kvInUse, _runner.Kv.TokensInUse(_running.Count));
    }

    public void Dispose()
    {
        lock (_lock) _stopping = true;
        _wake.Release();
        _thread.Join();
        _wake.Dispose();
    }
}
