namespace FeatureFlow.Models.HuggingFace;

/// <summary>
/// GPT-2 weights in Hugging Face's layout: the Conv1D matrices are stored [in, out] (y = x·W + b), which is the
/// operand order MatMul takes, so they are written to graphs as they are read.
/// </summary>
public sealed class Gpt2Weights
{
    public required float[] TokenEmbedding { get; init; }     // wte [vocab, d_model]
    public required float[] PositionEmbedding { get; init; }  // wpe [context, d_model]
    public required float[][] Ln1Weight { get; init; }        // [layer][d_model]
    public required float[][] Ln1Bias { get; init; }          // [layer][d_model]
    public required float[][] QkvWeight { get; init; }        // c_attn [layer][d_model, 3·d_model]: q, k, v columns
    public required float[][] QkvBias { get; init; }          // [layer][3·d_model]
    public required float[][] AttnOutWeight { get; init; }    // attn.c_proj [layer][d_model, d_model]
    public required float[][] AttnOutBias { get; init; }      // [layer][d_model]
    public required float[][] Ln2Weight { get; init; }        // [layer][d_model]
    public required float[][] Ln2Bias { get; init; }          // [layer][d_model]
    public required float[][] MlpInWeight { get; init; }      // c_fc [layer][d_model, hidden]
    public required float[][] MlpInBias { get; init; }        // [layer][hidden]
    public required float[][] MlpOutWeight { get; init; }     // mlp.c_proj [layer][hidden, d_model]
    public required float[][] MlpOutBias { get; init; }       // [layer][d_model]
    public required float[] LnFinalWeight { get; init; }      // [d_model]
    public required float[] LnFinalBias { get; init; }        // [d_model]
    public required float[] Classifier { get; init; }         // lm_head [vocab, d_model]; wte itself when tied
}
