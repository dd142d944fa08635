using FeatureFlow.Models;
using FeatureFlow.Steering;

namespace FeatureFlow.Testing;

/// <summary>
/// A plain GPT-2 forward pass written from the model's equations (float32, one token at a time, its own KV cache),
/// with the steering hook applied at each site as the product's formula states it (<see cref="ReferenceTransformer.Hook"/>):
/// x = wte[token] + wpe[pos]; per block a = LN₁(x)·W_qkv + b_qkv split into heads, causal softmax(q·kᵀ/√hs)·v,
/// attn_out = context·W_o + b_o, x += attn_out; mlp_out = gelu_tanh(LN₂(x)·W_fc + b_fc)·W_proj + b_proj, x += mlp_out
/// (resid_post); logits = LN_f(x)·W_lm. No ONNX Runtime anywhere.
/// </summary>
public sealed class Gpt2Reference(OnnxGpt2Weights w, int contextLength)
{
    private readonly float[][] _keys = w.Blocks.Select(_ => new float[contextLength * w.DModel]).ToArray();
    private readonly float[][] _values = w.Blocks.Select(_ => new float[contextLength * w.DModel]).ToArray();

    public float[] Forward(int token, int pos, SteeringTensors? steering = null)
    {
        int d = w.DModel, hs = d / w.Heads;
        var x = new float[d];
        for (var i = 0; i < d; i++) x[i] = w.TokenTable[token * d + i] + w.PositionTable[pos * d + i];
        for (var l = 0; l < w.Blocks.Count; l++)
        {
            var b = w.Blocks[l];
            var qkv = Linear(LayerNorm(x, b.Ln1Weight, b.Ln1Bias), b.QkvWeight, b.QkvBias);
            qkv.AsSpan(d, d).CopyTo(_keys[l].AsSpan(pos * d, d));
            qkv.AsSpan(2 * d, d).CopyTo(_values[l].AsSpan(pos * d, d));
            var context = new float[d];
            var scores = new float[pos + 1];
            for (var h = 0; h < w.Heads; h++)
            {
                for (var t = 0; t <= pos; t++)
                {
                    var dot = 0f;
                    for (var i = 0; i < hs; i++) dot += qkv[h * hs + i] * _keys[l][t * d + h * hs + i];
                    scores[t] = dot / MathF.Sqrt(hs);
                }
                Softmax(scores);
                for (var t = 0; t <= pos; t++)
                    for (var i = 0; i < hs; i++) context[h * hs + i] += scores[t] * _values[l][t * d + h * hs + i];
            }
            var attn = Linear(context, b.AttnProjWeight, b.AttnProjBias);
            ReferenceTransformer.Hook(attn, new Site(l, SiteKind.AttnOut), steering);
            for (var i = 0; i < d; i++) x[i] += attn[i];
            var hidden = Linear(LayerNorm(x, b.Ln2Weight, b.Ln2Bias), b.FcWeight, b.FcBias);
            for (var i = 0; i < hidden.Length; i++) hidden[i] = GeluTanh(hidden[i]);
            var mlp = Linear(hidden, b.MlpProjWeight, b.MlpProjBias);
            ReferenceTransformer.Hook(mlp, new Site(l, SiteKind.MlpOut), steering);
            for (var i = 0; i < d; i++) x[i] += mlp[i];
            ReferenceTransformer.Hook(x, new Site(l, SiteKind.ResidPost), steering);
        }
        return Linear(LayerNorm(x, w.FinalNormWeight, w.FinalNormBias), w.Classifier, null);
    }

    /// <summary>GPT-2's gelu_new: ½x(1 + tanh(√(2/π)(x + 0.044715x³))).</summary>
    private static float GeluTanh(float x) => 0.5f * x * (1f + MathF.Tanh(MathF.Sqrt(2f / MathF.PI) * (x + 0.044715f * x * x * x)));

    private float[] LayerNorm(float[] x, float[] weight, float[] bias)
    {
        var mean = x.Average();
        var variance = x.Select(v => (v - mean) * (v - mean)).Average();
        var inv = 1f / MathF.Sqrt(variance + w.Epsilon);
        return x.Select((v, i) => (v - mean) * inv * weight[i] + bias[i]).ToArray();
    }

    /// <summary>x·W + b with W row-major [in, out].</summary>
    private static float[] Linear(float[] x, float[] weight, float[]? bias)
    {
        var outDim = weight.Length / x.Length;
        var y = bias is null ? new float[outDim] : (float[])bias.Clone();
        for (var i = 0; i < x.Length; i++)
        {
            var xi = x[i];
            var row = weight.AsSpan(i * outDim, outDim);
            for (var j = 0; j < outDim; j++) y[j] += xi * row[j];
        }
        return y;
    }

    private static void Softmax(Span<float> x)
    {
        var max = float.NegativeInfinity;
        foreach (var v in x) max = MathF.Max(max, v);
        var sum = 0f;
        for (var i = 0; i < x.Length; i++) sum += x[i] = MathF.Exp(x[i] - max);
        for (var i = 0; i < x.Length; i++) x[i] /= sum;
    }
}
