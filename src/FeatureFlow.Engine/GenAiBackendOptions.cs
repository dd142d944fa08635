namespace FeatureFlow.Engine;

/// <summary>How <see cref="GenAiBackend"/> sets up ONNX Runtime GenAI.</summary>
public sealed record GenAiBackendOptions
{
    /// <summary>GenAI execution providers by GenAI's names ("cuda", ...), in order; empty keeps genai_config.json's.</summary>
    public IReadOnlyList<string> Providers { get; init; } = [];
    /// <summary>Intra-op threads of the decoder session; 0 keeps genai_config.json's (ONNX Runtime's default).</summary>
    public int IntraOpThreads { get; init; } = 1;

    public void Validate()
    {
        if (IntraOpThreads < 0) throw new ArgumentException($"intra_op_threads must be ≥ 0, got {IntraOpThreads}");
        if (Providers.Any(string.IsNullOrWhiteSpace)) throw new ArgumentException("providers must not hold empty names");
    }
}
