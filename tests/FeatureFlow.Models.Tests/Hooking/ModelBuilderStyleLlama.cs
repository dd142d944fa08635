using FeatureFlow.Onnx;
using FeatureFlow.Onnx.Ir;
using DataType = FeatureFlow.Onnx.Ir.TensorProto.Types.DataType;

namespace FeatureFlow.Models.Tests.Hooking;

/// <summary>
/// A Llama decoder spelled the way onnxruntime-genai's model builder spells it, for weights we have a reference for
/// (llama2.c stories260K): token Gather, SimplifiedLayerNormalization, MatMul projections, com.microsoft RotaryEmbedding
/// (interleaved pairs, llama2.c's convention), com.microsoft GroupQueryAttention with separate past/present key and value
/// and seqlens_k/total_sequence_length computed from attention_mask, SkipSimplifiedLayerNormalization carrying the
/// residual stream (sum as output 3), SiLU-gated MLP, a last SkipSimplifiedLayerNormalization as the final norm.
/// </summary>
internal static class ModelBuilderStyleLlama
{
    private const string Ms = "com.microsoft";

    public static ModelProto Build(LoadedCheckpoint checkpoint)
    {
        var (a, w) = (checkpoint.Architecture, checkpoint.Weights);
        int d = a.DModel, hs = a.HeadSize, kv = a.KvHeads;
        var g = new GraphBuilder("model-builder-style-llama");
        var ids = g.Input("input_ids", DataType.Int64, "batch_size", "sequence_length");
        var mask = g.Input("attention_mask", DataType.Int64, "batch_size", "total_sequence_length");
        var positions = g.Input("position_ids", DataType.Int64, "batch_size", "sequence_length");
        var past = Enumerable.Range(0, a.Layers).Select(l => (
            Key: g.Input($"past_key_values.{l}.key", DataType.Float, "batch_size", kv, "past_sequence_length", hs),
            Value: g.Input($"past_key_values.{l}.value", DataType.Float, "batch_size", kv, "past_sequence_length", hs))).ToArray();

        var lengths = g.Op("ReduceSum", [mask, g.ConstInt64(1)], Attr.Int("keepdims", 0));
        var seqlensK = g.Op("Cast", [g.Op("Sub", [lengths, g.ScalarInt64(1)])], Attr.Int("to", (long)DataType.Int32));
        var total = g.Op("Cast", [g.Op("Gather", [g.Op("Shape", [mask]), g.ScalarInt64(1)])], Attr.Int("to", (long)DataType.Int32));
        var (cos, sin) = RotaryCaches(g, a);

        var x = g.Op("Gather", [g.Initializer("model.embed_tokens.weight", w.TokenEmbedding, a.VocabSize, d), ids]);
        var normed = g.Op("SimplifiedLayerNormalization", [x, g.Initializer("layers.0.input_layernorm.weight", w.RmsAttention[0], d)],
            Attr.Int("axis", -1), Attr.Float("epsilon", a.NormEpsilon));
        var residual = x;
        for (var l = 0; l < a.Layers; l++)
        {
            var q = Rotary(g, Linear(g, normed, $"layers.{l}.attn.q_proj", w.Wq[l], d, d), positions, cos, sin);
            var k = Rotary(g, Linear(g, normed, $"layers.{l}.attn.k_proj", w.Wk[l], a.KvDim, d), positions, cos, sin);
            var v = Linear(g, normed, $"layers.{l}.attn.v_proj", w.Wv[l], a.KvDim, d);
            var attention = g.DomainNode(Ms, "GroupQueryAttention", [q, k, v, past[l].Key, past[l].Value, seqlensK, total],
                [$"layers.{l}/attn/output", $"present.{l}.key", $"present.{l}.value"],
                Attr.Int("num_heads", a.Heads), Attr.Int("kv_num_heads", kv));
            g.Output(attention[1], attention[1], DataType.Float, "batch_size", kv, "total_sequence_length", hs);
            g.Output(attention[2], attention[2], DataType.Float, "batch_size", kv, "total_sequence_length", hs);
            var o = Linear(g, attention[0], $"layers.{l}.attn.o_proj", w.Wo[l], d, d);
            (normed, residual) = SkipNorm(g, o, residual, g.Initializer($"layers.{l}.post_attention_layernorm.weight", w.RmsFfn[l], d), a, l, "attn");
            var gate = Linear(g, normed, $"layers.{l}.mlp.gate_proj", w.W1[l], a.HiddenDim, d);
            var up = Linear(g, normed, $"layers.{l}.mlp.up_proj", w.W3[l], a.HiddenDim, d);
            var down = Linear(g, g.Op("Mul", [g.Op("Mul", [gate, g.Op("Sigmoid", [gate])]), up]), $"layers.{l}.mlp.down_proj", w.W2[l], d, a.HiddenDim);
            var nextNorm = l + 1 < a.Layers
                ? g.Initializer($"layers.{l + 1}.input_layernorm.weight", w.RmsAttention[l + 1], d)
                : g.Initializer("model.norm.weight", w.RmsFinal, d);
            (normed, residual) = SkipNorm(g, down, residual, nextNorm, a, l, "mlp", withSum: l + 1 < a.Layers);
        }
        var logits = g.Op("MatMul", [normed, g.Initializer("lm_head.weight", Matrix.Transpose(w.Classifier, a.VocabSize, d), d, a.VocabSize)]);
        g.Output(logits, "logits", DataType.Float, "batch_size", "sequence_length", a.VocabSize);
        return g.Build(new OnnxModelOptions { DomainOpsets = [new(Ms, 1)] });
    }

    private static (string Normed, string Sum) SkipNorm(GraphBuilder g, string input, string skip, string weight, ModelArchitecture a,
        int layer, string what, bool withSum = true)
    {
        string[] outputs = withSum
            ? [$"layers.{layer}/{what}_norm/output", $"layers.{layer}/{what}_norm/mean", $"layers.{layer}/{what}_norm/inv_std_var",
                $"layers.{layer}/{what}_norm/sum"]
            : [$"layers.{layer}/{what}_norm/output"];
        var o = g.DomainNode(Ms, "SkipSimplifiedLayerNormalization", [input, skip, weight], outputs, Attr.Float("epsilon", a.NormEpsilon));
        return (o[0], withSum ? o[3] : "");
    }

    private static (string Cos, string Sin) RotaryCaches(GraphBuilder g, ModelArchitecture a)
    {
        var half = a.HeadSize / 2;
        var cos = new float[a.ContextLength * half];
        var sin = new float[a.ContextLength * half];
        for (var p = 0; p < a.ContextLength; p++)
            for (var i = 0; i < half; i++)
            {
                var angle = p / MathF.Pow(a.RotaryTheta, 2f * i / a.HeadSize);
                (cos[p * half + i], sin[p * half + i]) = (MathF.Cos(angle), MathF.Sin(angle));
            }
        return (g.Initializer("cos_cache", cos, a.ContextLength, half), g.Initializer("sin_cache", sin, a.ContextLength, half));
    }

    private static string Rotary(GraphBuilder g, string x, string positions, string cos, string sin) =>
        g.DomainNode(Ms, "RotaryEmbedding", [x, positions, cos, sin], [x + "/rotary"], Attr.Int("interleaved", 1))[0];

    /// <summary>y = x·Wᵀ for W stored [out][in], as the model builder stores MatMul weights [in, out].</summary>
    private static string Linear(GraphBuilder g, string x, string name, float[] weight, int outDim, int inDim) =>
        g.Op("MatMul", [x, g.Initializer(name + ".weight", Matrix.Transpose(weight, outDim, inDim), inDim, outDim)]);
}
