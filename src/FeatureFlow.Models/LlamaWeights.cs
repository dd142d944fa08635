namespace FeatureFlow.Models;

/// <summary>
/// Llama-family weights in row-major [out][in] layout (y = W·x), one array per matrix and layer.
/// </summary>
public sealed class LlamaWeights
{
    public required float[] TokenEmbedding { get; init; } // [vocab, d_model]
    public required float[][] RmsAttention { get; init; } // [layer][d_model]
    public required float[][] Wq { get; init; }           // [layer][d_model * d_model]
    public required float[][] Wk { get; init; }           // [layer][kv_dim * d_model]
    public required float[][] Wv { get; init; }           // [layer][kv_dim * d_model]
    public required float[][] Wo { get; init; }           // [layer][d_model * d_model]
    public required float[][] RmsFfn { get; init; }       // [layer][d_model]
    public required float[][] W1 { get; init; }           // [layer][hidden * d_model]
    public required float[][] W2 { get; init; }           // [layer][d_model * hidden]
    public required float[][] W3 { get; init; }           // [layer][hidden * d_model]
    public required float[] RmsFinal { get; init; }       // [d_model]
    public required float[] Classifier { get; init; }     // [vocab, d_model]; the embedding itself when tied
}

/// <summary>A checkpoint read into memory: its shape, its weights, and where it came from.</summary>
public sealed record LoadedCheckpoint(ModelArchitecture Architecture, LlamaWeights Weights, string SourcePath, string Sha256);
