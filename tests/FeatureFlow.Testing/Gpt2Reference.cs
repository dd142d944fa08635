using FeatureFlow.Models;
using FeatureFlow.Models.HuggingFace;
using FeatureFlow.Steering;

namespace FeatureFlow.Testing;

/// <summary>
/// The plain GPT-2 forward pass, written from transformers' GPT2Model equations (not from any graph; no ONNX
/// Runtime): token plus learned position embedding; per block x += c_proj(attn(ln_1(x))), x += mlp(ln_2(x)) with
/// Conv1D y = x·W + b, causal softmax(q·k/√hs), gelu_new; logits = ln_f(x)·lm_headᵀ. One token at a time in float32
/// with its own KV cache, and the steering hook applied at each site exactly as <see cref="ReferenceTransformer"/>
/// applies it.
/// Runs on weights from a Hugging Face checkpoint or from a third-party ONNX graph (<see cref="OnnxGpt2Weights"/>).
/// </summary>
public sealed class Gpt2Reference(ModelArchitecture a, Gpt2Weights w)
{
    private readonly List<float[]>[] _keys = Enumerable.Range(0, a.Layers).Select(_ => new List<float[]>()).ToArray();
    private readonly List<float[]>[] _values = Enumerable.Range(0, a.Layers).Select(_ => new List<float[]>()).ToArray();

    /// <summary>Logits for the next token after <paramref name="token"/>, which sits at the next position.</summary>
    public float[] Forward(int token, SteeringTensors? steering = null)
    {
        int d = a.DModel, hs = a.HeadSize, pos = _keys[0].Count;
        var x = new float[d];
        for (var i = 0; i < d; i++) x[i] = w.TokenEmbedding[token * d + i] + w.PositionEmbedding[pos * d + i];
        for (var l = 0; l < a.Layers; l++)
        {
            var qkv = Conv1D(LayerNorm(x, w.Ln1Weight[l], w.Ln1Bias[l]), w.QkvWeight[l], w.QkvBias[l]);
            var q = qkv[..d];
            _keys[l].Add(qkv[d..(2 * d)]);
            _values[l].Add(qkv[(2 * d)..]);
            var context = new float[d];
            for (var h = 0; h < a.Heads; h++)
            {
                var scores = new float[pos + 1];
                for (var t = 0; t <= pos; t++)
                {
                    var dot = 0f;
                    for (var i = 0; i < hs; i++) dot += q[h * hs + i] * _keys[l][t][h * hs + i];
                    scores[t] = dot / MathF.Sqrt(hs);
                }
                Softmax(scores);
                for (var t = 0; t <= pos; t++)
                    for (var i = 0; i < hs; i++) context[h * hs + i] += scores[t] * _values[l][t][h * hs + i];
            }
            var attn = Conv1D(context, w.AttnOutWeight[l], w.AttnOutBias[l]);
            ReferenceTransformer.Hook(attn, new Site(l, SiteKind.AttnOut), steering);
            for (var i = 0; i < d; i++) x[i] += attn[i];

            var hidden = Conv1D(LayerNorm(x, w.Ln2Weight[l], w.Ln2Bias[l]), w.MlpInWeight[l], w.MlpInBias[l]);
            for (var i = 0; i < hidden.Length; i++) hidden[i] = GeluNew(hidden[i]);
            var mlp = Conv1D(hidden, w.MlpOutWeight[l], w.MlpOutBias[l]);
            ReferenceTransformer.Hook(mlp, new Site(l, SiteKind.MlpOut), steering);
            for (var i = 0; i < d; i++) x[i] += mlp[i];
            ReferenceTransformer.Hook(x, new Site(l, SiteKind.ResidPost), steering);
        }
        var final = LayerNorm(x, w.LnFinalWeight, w.LnFinalBias);
        var logits = new float[a.VocabSize];
        for (var v = 0; v < logits.Length; v++)
        {
            var sum = 0f;
            for (var i = 0; i < d; i++) sum += final[i] * w.Classifier[v * d + i];
            logits[v] = sum;
        }
        return logits;
    }

    /// <summary>(x − mean) / √(var + ε) · w + b with the biased variance, as torch.nn.LayerNorm.</summary>
    private float[] LayerNorm(float[] x, float[] weight, float[] bias)
    {
        double mean = x.Average(), variance = x.Select(v => (v - mean) * (v - mean)).Average();
        var inv = 1 / Math.Sqrt(variance + a.NormEpsilon);
        return x.Select((v, i) => (float)((v - mean) * inv) * weight[i] + bias[i]).ToArray();
    }

    /// <summary>transformers' Conv1D: y = x·W + b with W stored [in, out].</summary>
    private static float[] Conv1D(float[] x, float[] weight, float[] bias)
    {
        var y = (float[])bias.Clone();
        for (var i = 0; i < x.Length; i++)
            for (var o = 0; o < y.Length; o++) y[o] += x[i] * weight[i * y.Length + o];
        return y;
    }

    private static float GeluNew(float x) =>
        0.5f * x * (1f + MathF.Tanh(MathF.Sqrt(2f / MathF.PI) * (x + 0.044715f * x * x * x)));

    private static void Softmax(Span<float> x)
    {
        var max = float.MinValue;
        foreach (var v in x) max = Math.Max(max, v);
        var sum = 0f;
        for (var i = 0; i < x.Length; i++) sum += x[i] = MathF.Exp(x[i] - max);
        for (var i = 0; i < x.Length; i++) x[i] /= sum;
    }
}
