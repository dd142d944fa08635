namespace FeatureFlow.Engine;

/// <summary>A snapshot of what the engine is doing, for metrics, health and tests.</summary>
public sealed record EngineFigures
{
    public int QueuedRequests { get; init; }
    /// <summary>Prompt + max_tokens of the waiting requests.</summary>
    public long QueuedTokens { get; init; }
    public int RunningRows { get; init; }
    /// <summary>Tokens reserved by running rows (prompt + max_tokens each) out of <see cref="KvTokenBudget"/>.</summary>
    public long KvTokensReserved { get; init; }
    /// <summary>Tokens the running rows' KV cache really holds.</summary>
    public long KvTokensInUse { get; init; }
    public long KvTokenBudget { get; init; }
    public long PrefillSteps { get; init; }
    public long DecodeSteps { get; init; }
    /// <summary>Prefill steps that ran the graph without hooks (the row steered and read out nothing).</summary>
    public long PlainPrefillSteps { get; init; }
    /// <summary>Decode steps that ran the graph without hooks (no row steered or read out a site).</summary>
    public long PlainDecodeSteps { get; init; }
    /// <summary>Rows summed over decode steps: ÷ <see cref="DecodeSteps"/> is the mean batch size.</summary>
    public long DecodeRows { get; init; }
    public long GeneratedTokens { get; init; }
    /// <summary>
    /// Managed bytes the loop thread allocated in decode steps, summed: the model step, sampling and logging each
    /// row's token, and ending the rows that finished.
    /// </summary>
    public long DecodeAllocatedBytes { get; init; }
    /// <summary>Seconds spent in the model (ONNX Runtime) during decode steps.</summary>
    public double DecodeModelSeconds { get; init; }
    /// <summary>Seconds spent in decode steps in all: the model, then sampling and streaming each row's token.</summary>
    public double DecodeStepSeconds { get; init; }

    public double TokensPerDecodeStep => DecodeSteps == 0 ? 0 : DecodeRows / (double)DecodeSteps;
}

/// <summary>A request refused because a queue limit is reached. <see cref="Limit"/> is the option's name.</summary>
public sealed class EngineOverloadedException(string limit, string message, TimeSpan retryAfter) : Exception(message)
{
    public string Limit { get; } = limit;
    /// <summary>An estimate of when the queue will have room, from the engine's recent throughput.</summary>
    public TimeSpan RetryAfter { get; } = retryAfter;
}
