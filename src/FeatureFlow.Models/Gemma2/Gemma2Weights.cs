namespace FeatureFlow.Models.Gemma2;

/// <summary>
/// Gemma 2 weights in row-major [out][in] layout (y = W·x), one array per matrix and layer. Norm weights are kept
/// as stored: Gemma's RMSNorm scales by (1 + w), which whoever applies them must add.
/// </summary>
public sealed class Gemma2Weights
{
    public required float[] TokenEmbedding { get; init; }        // [vocab, d_model]
    public required float[][] InputNorm { get; init; }           // [layer][d_model]
    public required float[][] Wq { get; init; }                  // [layer][heads·head_dim × d_model]
    public required float[][] Wk { get; init; }                  // [layer][kv_heads·head_dim × d_model]
    public required float[][] Wv { get; init; }                  // [layer][kv_heads·head_dim × d_model]
    public required float[][] Wo { get; init; }                  // [layer][d_model × heads·head_dim]
    public required float[][] PostAttentionNorm { get; init; }   // [layer][d_model]
    public required float[][] PreFeedforwardNorm { get; init; }  // [layer][d_model]
    public required float[][] Gate { get; init; }                // [layer][hidden × d_model]
    public required float[][] Up { get; init; }                  // [layer][hidden × d_model]
    public required float[][] Down { get; init; }                // [layer][d_model × hidden]
    public required float[][] PostFeedforwardNorm { get; init; } // [layer][d_model]
    public required float[] FinalNorm { get; init; }             // [d_model]
    public required float[] Classifier { get; init; }            // [vocab, d_model]; the embedding itself when tied
}
