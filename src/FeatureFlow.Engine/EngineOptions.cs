namespace FeatureFlow.Engine;

public enum ExecutionProviderPreference
{
    /// <summary>CUDA when its libraries load, otherwise CPU.</summary>
    Auto,
    Cpu,
    /// <summary>CUDA or fail: for deployments where a silent CPU fallback would be an outage.</summary>
    Cuda,
}

/// <summary>Everything that sizes the engine; each has a <c>serve</c> flag of the same name in kebab case.</summary>
public sealed record EngineOptions
{
    public ExecutionProviderPreference ExecutionProvider { get; init; } = ExecutionProviderPreference.Auto;
    public int CudaDeviceId { get; init; }
    /// <summary>
    /// ONNX Runtime intra-op threads per session run; 0 lets ONNX Runtime choose (one per core). Default 1: on the
    /// shipped model a step is hundreds of tiny operators, and a second thread costs more in hand-offs than it saves
    /// while the other core serves gRPC (docs/benchmarks.md). Large models want more.
    /// </summary>
    public int IntraOpThreads { get; init; } = 1;
    /// <summary>Most rows one decode step runs, and so the KV cache's slots (each holds a full context).</summary>
    public int MaxBatchRows { get; init; } = 64;
    /// <summary>
    /// Tokens the running rows may reserve together (each reserves prompt + max_tokens); a request that does not
    /// fit waits in the queue. Null: <see cref="MaxBatchRows"/> × the context length (every slot can be full).
    /// </summary>
    public long? KvTokenBudget { get; init; }
    /// <summary>Requests that may wait for a row; one more is refused with the limit's name.</summary>
    public int MaxQueuedRequests { get; init; } = 256;
    /// <summary>Prompt + max_tokens of all waiting requests together; one more is refused with the limit's name.</summary>
    public long MaxQueuedTokens { get; init; } = 262_144;
    /// <summary>
    /// Prompt tokens prefilled between two decode steps (at least one request always is): bounds the stall that a
    /// burst of new requests causes the running rows.
    /// </summary>
    public int MaxPrefillTokensPerStep { get; init; } = 2048;
    /// <summary>max_tokens when a request leaves it unset.</summary>
    public int DefaultMaxTokens { get; init; } = 256;

    /// <summary>Checks the options once, at start-up, naming the option.</summary>
    public void Validate()
    {
        if (MaxBatchRows is < 1 or > 4096) throw new ArgumentException($"max_batch_rows must be in 1..4096, got {MaxBatchRows}");
        if (KvTokenBudget is < 1) throw new ArgumentException($"kv_token_budget must be positive, got {KvTokenBudget}");
        if (MaxQueuedRequests < 0) throw new ArgumentException($"max_queued_requests must be ≥ 0, got {MaxQueuedRequests}");
        if (MaxQueuedTokens < 0) throw new ArgumentException($"max_queued_tokens must be ≥ 0, got {MaxQueuedTokens}");
        if (MaxPrefillTokensPerStep < 1) throw new ArgumentException($"max_prefill_tokens_per_step must be positive, got {MaxPrefillTokensPerStep}");
        if (DefaultMaxTokens < 1) throw new ArgumentException($"default_max_tokens must be positive, got {DefaultMaxTokens}");
    }
}
