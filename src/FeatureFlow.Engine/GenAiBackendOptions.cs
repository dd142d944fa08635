namespace FeatureFlow.Engine;

/// <summary>How <see cref="GenAiBackend"/> sets up ONNX Runtime GenAI.</summary>
public sealed record GenAiBackendOptions
{
    /// <summary>GenAI execution providers by GenAI's names ("cuda", ...), in order; empty keeps genai_config.json's.</summary>
    public IReadOnlyList<string> Providers { get; init; } = [];
    /// <summary>Intra-op threads of the decoder session; 0 keeps genai_config.json's (ONNX Runtime's default).</summary>
    public int IntraOpThreads { get; init; } = 1;
    /// <summary>
    /// The decoder graph to run, relative to the folder, instead of the one genai_config.json names: a hooked
    /// folder's genai_config.json names the graph without hooks, which GenAI can run without our inputs.
    /// </summary>
    public string? DecoderFile { get; init; }

    public void Validate()
    {
        if (IntraOpThreads < 0) throw new ArgumentException($"intra_op_threads must be ≥ 0, got {IntraOpThreads}");
        if (Providers.Any(string.IsNullOrWhiteSpace)) throw new ArgumentException("providers must not hold empty names");
    }
}
