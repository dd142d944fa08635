using FeatureFlow.Models.HuggingFace;
using FeatureFlow.Onnx;
using FeatureFlow.Onnx.Ir;
using DataType = FeatureFlow.Onnx.Ir.TensorProto.Types.DataType;

namespace FeatureFlow.Models.Export;

/// <summary>
/// Writes a GPT-2 decoder (learned positions, pre-LayerNorm blocks, multi-head attention without rotary embedding,
/// a gelu_new MLP, biases everywhere) with the same interface, steering hooks and KV layouts as
/// <see cref="LlamaGraphExporter"/>: GPT-2's attention is grouped-query attention with one query head per KV head,
/// so both layouts' attention is shared with it.
/// </summary>
public static class Gpt2GraphExporter
{
    /// <param name="externalData">The folder's shared weights file; null writes every initializer inline.</param>
    public static ModelProto Export(ModelArchitecture arch, Gpt2Weights w, HookedGraphOptions options, string modelName,
        ExternalDataFile? externalData = null)
    {
        RequireWritable(arch);
        options.RequirePlainOperators("GPT-2");
        var g = new GraphBuilder(modelName, externalData);
        var inputs = LlamaGraphExporter.DeclareInputs(g, arch, options);
        int d = arch.DModel;

        var embedding = g.Initializer("embed.W_E", w.TokenEmbedding, arch.VocabSize, d);
        var positions = g.Initializer("pos_embed.W_pos", w.PositionEmbedding, arch.ContextLength, d);
        var x = g.Op("Add", [
            g.Op("Gather", [embedding, inputs.InputIds], Attr.Int("axis", 0)),
            g.Op("Gather", [positions, inputs.PositionIds], Attr.Int("axis", 0))]);
        var cache = inputs.Cache(g);

        for (var l = 0; l < arch.Layers; l++)
        {
            using var _ = g.Scope($"blocks.{l}");
            var xn = LayerNorm(g, x, $"blocks.{l}.ln_1", w.Ln1Weight[l], w.Ln1Bias[l], arch);
            var attn = Attention(g, arch, l, w, xn, cache, inputs.PastKeys[l], inputs.PastValues[l]);
            attn = SteeringHook.Apply(g, inputs.Steering, new Site(l, SiteKind.AttnOut), attn, options.SiteOutputs, d);
            x = g.Op("Add", [x, attn]);
            xn = LayerNorm(g, x, $"blocks.{l}.ln_2", w.Ln2Weight[l], w.Ln2Bias[l], arch);
            var mlp = Mlp(g, arch, l, w, xn);
            mlp = SteeringHook.Apply(g, inputs.Steering, new Site(l, SiteKind.MlpOut), mlp, options.SiteOutputs, d);
            x = g.Op("Add", [x, mlp]);
            x = SteeringHook.Apply(g, inputs.Steering, new Site(l, SiteKind.ResidPost), x, options.SiteOutputs, d);
        }

        x = LayerNorm(g, x, "ln_final", w.LnFinalWeight, w.LnFinalBias, arch);
        var classifier = arch.TiedEmbeddings
            ? embedding
            : g.Initializer("unembed.W_U", w.Classifier, arch.VocabSize, d);
        var logits = g.Op("MatMul", [x, g.Op("Transpose", [classifier], Attr.Ints("perm", 1, 0))]);
        return LlamaGraphExporter.Build(g, arch, options, logits, "GPT-2");
    }

    /// <summary>The layout this exporter writes; other architectures are refused by name, not written wrongly.</summary>
    private static void RequireWritable(ModelArchitecture arch)
    {
        arch.Validate();
        if (arch.Norm != NormKind.LayerNorm || arch.Mlp != MlpKind.Gelu || arch.Positions != PositionEmbedding.Learned
            || arch.KvHeads != arch.Heads || arch.RopeScaling is not null)
            throw new InvalidDataException("the GPT-2 exporter writes layer_norm, gelu, learned-position models with as "
                + $"many kv heads as heads; {arch.Family} is {arch.Norm}, {arch.Mlp}, {arch.Positions}, "
                + $"{arch.KvHeads} kv heads for {arch.Heads} heads");
    }

    private static string LayerNorm(GraphBuilder g, string x, string name, float[] weight, float[] bias,
        ModelArchitecture arch) =>
        g.Op("LayerNormalization", [
                x,
                g.Initializer($"{name}.w", weight, arch.DModel),
                g.Initializer($"{name}.b", bias, arch.DModel)],
            Attr.Int("axis", -1), Attr.Float("epsilon", arch.NormEpsilon));

    private static string Attention(GraphBuilder g, ModelArchitecture arch, int l, Gpt2Weights w, string xn,
        LlamaGraphExporter.KvCache cache, string pastKey, string pastValue)
    {
        using var _ = g.Scope("attn");
        int d = arch.DModel, hs = arch.HeadSize;
        var qkv = Linear(g, xn, $"blocks.{l}.attn.W_QKV", w.QkvWeight[l], w.QkvBias[l], d, 3 * d);
        var heads = g.ConstInt64(0, 0, arch.Heads, hs);
        var parts = g.Op("Split", [qkv], 3, Attr.Int("axis", -1)).Select(p => g.Op("Reshape", [p, heads])).ToArray();
        var context = cache.Layout == KvCacheLayout.SharedBuffer
            ? LlamaGraphExporter.SharedBufferAttention(g, arch, l, parts[0], parts[1], parts[2], cache, pastKey,
                pastValue)
            : LlamaGraphExporter.ConcatAttention(g, arch, l, parts[0], parts[1], parts[2], cache.Allowed!, pastKey,
                pastValue);
        return Linear(g, context, $"blocks.{l}.attn.W_O", w.AttnOutWeight[l], w.AttnOutBias[l], d, d);
    }

    private static string Mlp(GraphBuilder g, ModelArchitecture arch, int l, Gpt2Weights w, string xn)
    {
        using var _ = g.Scope("mlp");
        int d = arch.DModel, h = arch.HiddenDim;
        var hidden = Linear(g, xn, $"blocks.{l}.mlp.W_in", w.MlpInWeight[l], w.MlpInBias[l], d, h);
        return Linear(g, GeluNew(g, hidden), $"blocks.{l}.mlp.W_out", w.MlpOutWeight[l], w.MlpOutBias[l], h, d);
    }

    /// <summary>GPT-2's gelu_new, 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), in plain operators (opset 17).
    /// </summary>
    private static string GeluNew(GraphBuilder g, string x)
    {
        var cube = g.Op("Mul", [g.Op("Mul", [x, x]), x]);
        var inner = g.Op("Mul", [
            g.Op("Add", [x, g.Op("Mul", [cube, g.ScalarFloat(0.044715f)])]),
            g.ScalarFloat(MathF.Sqrt(2f / MathF.PI))]);
        var gate = g.Op("Add", [g.Op("Tanh", [inner]), g.ScalarFloat(1f)]);
        return g.Op("Mul", [g.Op("Mul", [x, g.ScalarFloat(0.5f)]), gate]);
    }

    /// <summary>y = x·W + b for a Conv1D weight stored [in, out]: MatMul's operand order, no transpose.</summary>
    private static string Linear(GraphBuilder g, string x, string name, float[] weight, float[] bias, int inDim,
        int outDim) =>
        g.Op("Add", [
            g.Op("MatMul", [x, g.Initializer(name, weight, inDim, outDim)]),
            g.Initializer(name.Replace(".W_", ".b_", StringComparison.Ordinal), bias, outDim)]);
}
