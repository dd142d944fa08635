using FeatureFlow.Models;
using FeatureFlow.Models.Gemma2;
using FeatureFlow.Steering;

namespace FeatureFlow.Testing;

/// <summary>
/// The plain Gemma 2 reference forward pass, written from transformers' Gemma2 equations loop for loop (float32, one
/// token at a time, its own KV cache), with the steering hook at each site as <see cref="ReferenceTransformer"/>
/// applies it. The config decides every Gemma-only feature, so a test can switch one off (say, the sliding window)
/// and show that the graph's agreement depends on it. No ONNX Runtime anywhere.
/// </summary>
public sealed class Gemma2Reference
{
    private readonly Gemma2Config _c;
    private readonly ModelArchitecture _a;
    private readonly Gemma2Weights _w;
    private readonly float[][] _keyCache;
    private readonly float[][] _valueCache;

    public Gemma2Reference(Gemma2Config config, Gemma2Weights weights)
    {
        _c = config;
        _a = config.Architecture;
        _w = weights;
        var kvDim = _a.KvHeads * _a.HeadSize;
        _keyCache = Enumerable.Range(0, _a.Layers).Select(_ => new float[_a.ContextLength * kvDim]).ToArray();
        _valueCache = Enumerable.Range(0, _a.Layers).Select(_ => new float[_a.ContextLength * kvDim]).ToArray();
    }

    /// <summary>
    /// Logits for <paramref name="token"/> at <paramref name="pos"/> (every earlier position must have run), steering
    /// with one row of tensors (null: none); <paramref name="sites"/>, when given, receives every site's steered value.
    /// </summary>
    public float[] Forward(int token, int pos, SteeringTensors? steering = null,
        Dictionary<Site, float[]>? sites = null)
    {
        void Hook(Span<float> h, Site site)
        {
            ReferenceTransformer.Hook(h, site, steering);
            if (sites is not null) sites[site] = h.ToArray();
        }

        int d = _a.DModel, hd = _a.HeadSize, heads = _a.Heads, hidden = _a.HiddenDim;
        int qDim = heads * hd, kvDim = _a.KvHeads * hd, group = heads / _a.KvHeads;
        // transformers: hidden_states * torch.tensor(hidden_size ** 0.5, dtype) — a double rounded to float32.
        var normalizer = (float)Math.Sqrt(d);
        var x = _w.TokenEmbedding.AsSpan(token * d, d).ToArray();
        for (var i = 0; i < d; i++) x[i] *= normalizer;
        var scaling = (float)(1.0 / Math.Sqrt(_c.QueryPreAttentionScalar));

        for (var l = 0; l < _a.Layers; l++)
        {
            var xn = RmsNorm(x, _w.InputNorm[l]);
            var q = new float[qDim];
            var k = _keyCache[l].AsSpan(pos * kvDim, kvDim);
            var v = _valueCache[l].AsSpan(pos * kvDim, kvDim);
            ReferenceTransformer.MatMul(q, xn, _w.Wq[l], d, qDim);
            ReferenceTransformer.MatMul(k, xn, _w.Wk[l], d, kvDim);
            ReferenceTransformer.MatMul(v, xn, _w.Wv[l], d, kvDim);
            for (var h = 0; h < heads; h++) RotateHalf(q.AsSpan(h * hd, hd), pos);
            for (var h = 0; h < _a.KvHeads; h++) RotateHalf(k.Slice(h * hd, hd), pos);

            // A sliding layer's query sees pos − window + 1 … pos (transformers masks key ≤ pos − window).
            var first = _c.IsSliding(l) ? Math.Max(0, pos - _c.SlidingWindow + 1) : 0;
            var scores = new float[pos + 1 - first];
            var context = new float[qDim];
            for (var h = 0; h < heads; h++)
            {
                var qh = q.AsSpan(h * hd, hd);
                var kvOffset = h / group * hd;
                for (var t = first; t <= pos; t++)
                {
                    var kt = _keyCache[l].AsSpan(t * kvDim + kvOffset, hd);
                    var dot = 0f;
                    for (var i = 0; i < hd; i++) dot += qh[i] * kt[i];
                    var s = dot * scaling;
                    if (_c.AttentionLogitSoftcap is { } cap) s = MathF.Tanh(s / cap) * cap;
                    scores[t - first] = s;
                }
                ReferenceTransformer.Softmax(scores);
                var outH = context.AsSpan(h * hd, hd);
                for (var t = first; t <= pos; t++)
                {
                    var vt = _valueCache[l].AsSpan(t * kvDim + kvOffset, hd);
                    for (var i = 0; i < hd; i++) outH[i] += scores[t - first] * vt[i];
                }
            }
            var projected = new float[d];
            ReferenceTransformer.MatMul(projected, context, _w.Wo[l], qDim, d);
            var attn = RmsNorm(projected, _w.PostAttentionNorm[l]);
            // hook_attn_out is what the attention branch adds to the residual stream: after its post-norm.
            Hook(attn, new Site(l, SiteKind.AttnOut));
            for (var i = 0; i < d; i++) x[i] += attn[i];

            xn = RmsNorm(x, _w.PreFeedforwardNorm[l]);
            var gate = new float[hidden];
            var up = new float[hidden];
            ReferenceTransformer.MatMul(gate, xn, _w.Gate[l], d, hidden);
            ReferenceTransformer.MatMul(up, xn, _w.Up[l], d, hidden);
            for (var i = 0; i < hidden; i++) gate[i] = GeluTanh(gate[i]) * up[i];
            var down = new float[d];
            ReferenceTransformer.MatMul(down, gate, _w.Down[l], hidden, d);
            var mlp = RmsNorm(down, _w.PostFeedforwardNorm[l]);
            Hook(mlp, new Site(l, SiteKind.MlpOut));
            for (var i = 0; i < d; i++) x[i] += mlp[i];
            Hook(x, new Site(l, SiteKind.ResidPost));
        }

        var final = RmsNorm(x, _w.FinalNorm);
        var logits = new float[_a.VocabSize];
        ReferenceTransformer.MatMul(logits, final, _w.Classifier, d, _a.VocabSize);
        if (_c.FinalLogitSoftcap is { } finalCap)
            for (var i = 0; i < logits.Length; i++) logits[i] = MathF.Tanh(logits[i] / finalCap) * finalCap;
        return logits;
    }

    /// <summary>Gemma2RMSNorm: x · rsqrt(mean(x²) + eps) · (1 + w).</summary>
    private float[] RmsNorm(ReadOnlySpan<float> x, float[] weight)
    {
        var ss = 0f;
        for (var j = 0; j < x.Length; j++) ss += x[j] * x[j];
        var inv = 1f / MathF.Sqrt(ss / x.Length + _a.NormEpsilon);
        var o = new float[x.Length];
        for (var j = 0; j < x.Length; j++) o[j] = x[j] * inv * (1f + weight[j]);
        return o;
    }

    /// <summary>q·cos + rotate_half(q)·sin; rotate_half(x1, x2) = (−x2, x1); cos, sin of cat(freqs, freqs).
    /// </summary>
    private void RotateHalf(Span<float> head, int pos)
    {
        var half = head.Length / 2;
        for (var i = 0; i < half; i++)
        {
            var freq = 1.0f / MathF.Pow(_a.RotaryTheta, 2 * i / (float)head.Length);
            var angle = pos * freq;
            float cos = MathF.Cos(angle), sin = MathF.Sin(angle);
            float x1 = head[i], x2 = head[i + half];
            head[i] = x1 * cos - x2 * sin;
            head[i + half] = x2 * cos + x1 * sin;
        }
    }

    /// <summary>PyTorch's gelu(approximate="tanh"), transformers' gelu_pytorch_tanh.</summary>
    private static float GeluTanh(float x) =>
        0.5f * x * (1f + MathF.Tanh(MathF.Sqrt(2f / MathF.PI) * (x + 0.044715f * x * x * x)));
}
