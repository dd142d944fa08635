using FeatureFlow.Models;
using FeatureFlow.Steering;
using Row = FeatureFlow.Models.Export.GraphNames.CoefficientRow;

namespace FeatureFlow.Testing;

/// <summary>
/// The plain reference forward pass: llama2.c's run.c forward() transcribed loop for loop (float32,
/// one token at a time, its own KV cache), plus the steering hook applied at each site exactly as the
/// product's formula states it. No ONNX Runtime anywhere.
/// </summary>
public sealed class ReferenceTransformer
{
    private readonly ModelArchitecture _a;
    private readonly LlamaWeights _w;
    private readonly float[][] _keyCache;
    private readonly float[][] _valueCache;

    public ReferenceTransformer(LoadedCheckpoint checkpoint)
    {
        _a = checkpoint.Architecture;
        _w = checkpoint.Weights;
        _keyCache = Enumerable.Range(0, _a.Layers).Select(_ => new float[_a.ContextLength * _a.KvDim]).ToArray();
        _valueCache = Enumerable.Range(0, _a.Layers).Select(_ => new float[_a.ContextLength * _a.KvDim]).ToArray();
    }

    /// <summary>Logits for <paramref name="token"/> at <paramref name="pos"/>, steering with one row of tensors (null: none).</summary>
    public float[] Forward(int token, int pos, SteeringTensors? steering = null)
    {
        int d = _a.DModel, kvDim = _a.KvDim, hs = _a.HeadSize, kvMul = _a.QueriesPerKvHead, hidden = _a.HiddenDim;
        var x = _w.TokenEmbedding.AsSpan(token * d, d).ToArray();
        var xb = new float[d];
        var q = new float[d];
        var att = new float[pos + 1];
        var hb = new float[hidden];
        var hb2 = new float[hidden];

        for (var l = 0; l < _a.Layers; l++)
        {
            RmsNorm(xb, x, _w.RmsAttention[l]);
            var k = _keyCache[l].AsSpan(pos * kvDim, kvDim);
            var v = _valueCache[l].AsSpan(pos * kvDim, kvDim);
            MatMul(q, xb, _w.Wq[l], d, d);
            MatMul(k, xb, _w.Wk[l], d, kvDim);
            MatMul(v, xb, _w.Wv[l], d, kvDim);

            for (var i = 0; i < d; i += 2)
            {
                var headDim = i % hs;
                var freq = 1.0f / MathF.Pow(_a.RotaryTheta, headDim / (float)hs);
                var val = pos * freq;
                float fcr = MathF.Cos(val), fci = MathF.Sin(val);
                Rotate(q, i, fcr, fci);
                if (i < kvDim) Rotate(k, i, fcr, fci);
            }

            var attOut = new float[d];
            for (var h = 0; h < _a.Heads; h++)
            {
                var qh = q.AsSpan(h * hs, hs);
                for (var t = 0; t <= pos; t++)
                {
                    var kt = _keyCache[l].AsSpan(t * kvDim + h / kvMul * hs, hs);
                    var score = 0f;
                    for (var i = 0; i < hs; i++) score += qh[i] * kt[i];
                    att[t] = score / MathF.Sqrt(hs);
                }
                Softmax(att.AsSpan(0, pos + 1));
                var outH = attOut.AsSpan(h * hs, hs);
                for (var t = 0; t <= pos; t++)
                {
                    var vt = _valueCache[l].AsSpan(t * kvDim + h / kvMul * hs, hs);
                    for (var i = 0; i < hs; i++) outH[i] += att[t] * vt[i];
                }
            }
            var attn = new float[d];
            MatMul(attn, attOut, _w.Wo[l], d, d);
            Hook(attn, new Site(l, SiteKind.AttnOut), steering);
            for (var i = 0; i < d; i++) x[i] += attn[i];

            RmsNorm(xb, x, _w.RmsFfn[l]);
            MatMul(hb, xb, _w.W1[l], d, hidden);
            MatMul(hb2, xb, _w.W3[l], d, hidden);
            for (var i = 0; i < hidden; i++)
            {
                var val = hb[i];
                val *= 1.0f / (1.0f + MathF.Exp(-val));
                hb[i] = val * hb2[i];
            }
            var mlp = new float[d];
            MatMul(mlp, hb, _w.W2[l], hidden, d);
            Hook(mlp, new Site(l, SiteKind.MlpOut), steering);
            for (var i = 0; i < d; i++) x[i] += mlp[i];
            Hook(x, new Site(l, SiteKind.ResidPost), steering);
        }

        RmsNorm(x, x, _w.RmsFinal);
        var logits = new float[_a.VocabSize];
        MatMul(logits, x, _w.Classifier, d, _a.VocabSize);
        return logits;
    }

    /// <summary>h ← h + add + Σ_k (α_k·a_k(h) + β_k)·v_k, a_k(h) = JumpReLU_θk(e_k·h + b_k); every slot reads the unsteered h.</summary>
    internal static void Hook(Span<float> h, Site site, SteeringTensors? s)
    {
        if (s is null) return;
        var delta = new float[h.Length];
        for (var slot = 0; slot < s.Shape.SlotsPerSite; slot++)
        {
            var e = s.EncoderRow(site, slot);
            var pre = s.Coefficient(site, Row.EncoderBias, slot);
            var dot = 0f;
            for (var i = 0; i < h.Length; i++) dot += e[i] * h[i];
            pre += dot;
            var a = pre > s.Coefficient(site, Row.Threshold, slot) ? pre : 0f;
            var coefficient = s.Coefficient(site, Row.Alpha, slot) * a + s.Coefficient(site, Row.Beta, slot);
            var v = s.DecoderAt(site, slot);
            for (var i = 0; i < h.Length; i++) delta[i] += coefficient * v[i];
        }
        var add = s.AddAt(site);
        for (var i = 0; i < h.Length; i++) h[i] = h[i] + add[i] + delta[i];
    }

    private static void Rotate(Span<float> vec, int i, float fcr, float fci)
    {
        float v0 = vec[i], v1 = vec[i + 1];
        vec[i] = v0 * fcr - v1 * fci;
        vec[i + 1] = v0 * fci + v1 * fcr;
    }

    private void RmsNorm(Span<float> o, ReadOnlySpan<float> x, float[] weight)
    {
        var ss = 0f;
        for (var j = 0; j < x.Length; j++) ss += x[j] * x[j];
        ss /= x.Length;
        ss += _a.NormEpsilon;
        ss = 1.0f / MathF.Sqrt(ss);
        for (var j = 0; j < x.Length; j++) o[j] = weight[j] * (ss * x[j]);
    }

    /// <summary>W (d,n) @ x (n,) → xout (d,), as run.c's matmul with W stored [out][in].</summary>
    private static void MatMul(Span<float> xout, ReadOnlySpan<float> x, float[] w, int n, int d)
    {
        for (var i = 0; i < d; i++)
        {
            var val = 0f;
            for (var j = 0; j < n; j++) val += w[i * n + j] * x[j];
            xout[i] = val;
        }
    }

    private static void Softmax(Span<float> x)
    {
        var max = x[0];
        for (var i = 1; i < x.Length; i++) if (x[i] > max) max = x[i];
        var sum = 0f;
        for (var i = 0; i < x.Length; i++)
        {
            x[i] = MathF.Exp(x[i] - max);
            sum += x[i];
        }
        for (var i = 0; i < x.Length; i++) x[i] /= sum;
    }
}
