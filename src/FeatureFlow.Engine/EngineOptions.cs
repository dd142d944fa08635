namespace FeatureFlow.Engine;

public enum ExecutionProviderPreference
{
    /// <summary>CUDA when its libraries load, otherwise CPU.</summary>
    Auto,
    Cpu,
    /// <summary>CUDA or fail: for deployments where a silent CPU fallback would be an outage.</summary>
    Cuda,
}

public sealed record EngineOptions
{
    public ExecutionProviderPreference ExecutionProvider { get; init; } = ExecutionProviderPreference.Auto;
    public int CudaDeviceId { get; init; }
    /// <summary>ONNX Runtime intra-op threads per session run; 0 lets ONNX Runtime choose.</summary>
    public int IntraOpThreads { get; init; }
    /// <summary>Generations that run at once; further requests wait their turn.</summary>
    public int MaxConcurrentGenerations { get; init; } = Math.Max(1, Environment.ProcessorCount);
    /// <summary>Updates a generation may run ahead of its reader before the loop waits.</summary>
    public int StreamBufferUpdates { get; init; } = 16;
    /// <summary>Most rows one step may run (bounds the preallocated attention-mask buffer).</summary>
    public int MaxBatchRows { get; init; } = 256;
    /// <summary>max_tokens when a request leaves it unset.</summary>
    public int DefaultMaxTokens { get; init; } = 256;
}
