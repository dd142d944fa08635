using System.Runtime.InteropServices;
using FeatureFlow.Models;
using FeatureFlow.Models.HuggingFace;
using FeatureFlow.Onnx;
using FeatureFlow.Onnx.Ir;

namespace FeatureFlow.Testing;

/// <summary>
/// GPT-2's weights and shape as a third-party ONNX graph holds them, read straight from that graph's initializers
/// (external data included) by each export's own layout — independently of the hook inserter's structure
/// recognition — into the <see cref="Gpt2Weights"/> that <see cref="Gpt2Reference"/> runs on.
/// </summary>
public static class OnnxGpt2Weights
{
    /// <summary>
    /// A torch.onnx export: initializers named after the PyTorch parameters (m.transformer.h.L.attn.c_attn.weight…),
    /// some as Identity aliases of equal tensors; the classifier is the logits MatMul's weight.
    /// </summary>
    public static (ModelArchitecture Architecture, Gpt2Weights Weights) FromTorchExport(string graphPath, int heads)
    {
        var (model, dir) = (OnnxModelFile.Read(graphPath), Path.GetDirectoryName(Path.GetFullPath(graphPath))!);
        var g = model.Graph;
        var aliases = g.Node.Where(n => n.OpType == "Identity").ToDictionary(n => n.Output[0], n => n.Input[0]);
        float[] W(string name)
        {
            var stored = aliases.GetValueOrDefault("m." + name, "m." + name);
            return Floats(g.Initializer.Single(t => t.Name == stored), dir);
        }
        var layers = g.Initializer.Select(t => t.Name).Concat(aliases.Keys)
            .Count(n => n.StartsWith("m.transformer.h.", StringComparison.Ordinal)
                && n.EndsWith(".attn.c_attn.weight", StringComparison.Ordinal));
        float[][] Blocks(string name) =>
            Enumerable.Range(0, layers).Select(l => W($"transformer.h.{l}.{name}")).ToArray();
        var epsilon = g.Node.First(n => n.OpType == "LayerNormalization").Attribute.Single(a => a.Name == "epsilon").F;
        var lnFinal = W("transformer.ln_f.weight");
        var weights = new Gpt2Weights
        {
            TokenEmbedding = W("transformer.wte.weight"), PositionEmbedding = W("transformer.wpe.weight"),
            Ln1Weight = Blocks("ln_1.weight"), Ln1Bias = Blocks("ln_1.bias"),
            QkvWeight = Blocks("attn.c_attn.weight"), QkvBias = Blocks("attn.c_attn.bias"),
            AttnOutWeight = Blocks("attn.c_proj.weight"), AttnOutBias = Blocks("attn.c_proj.bias"),
            Ln2Weight = Blocks("ln_2.weight"), Ln2Bias = Blocks("ln_2.bias"),
            MlpInWeight = Blocks("mlp.c_fc.weight"), MlpInBias = Blocks("mlp.c_fc.bias"),
            MlpOutWeight = Blocks("mlp.c_proj.weight"), MlpOutBias = Blocks("mlp.c_proj.bias"),
            LnFinalWeight = lnFinal, LnFinalBias = W("transformer.ln_f.bias"),
            Classifier = ClassifierOf(g, dir, lnFinal.Length),
        };
        return (Architecture(heads, epsilon, weights), weights);
    }

    /// <summary>
    /// ONNX Runtime's fused GPT-2, read in node order: EmbedLayerNormalization holds the token and position tables and
    /// block 0's ln_1; the L-th Attention the packed QKV weight and bias; the MatMul after it the attention projection;
    /// SkipLayerNormalization 2L the projection bias (its bias input) and ln_2, 2L+1 the MLP projection bias and the
    /// next ln_1 (the last one: ln_f); the L-th FastGelu the fc bias, with the fc MatMul before it and the projection
    /// after.
    /// </summary>
    public static (ModelArchitecture Architecture, Gpt2Weights Weights) FromFusedExport(string graphPath)
    {
        var (model, dir) = (OnnxModelFile.Read(graphPath), Path.GetDirectoryName(Path.GetFullPath(graphPath))!);
        var g = model.Graph;
        float[] W(string name) => Floats(g.Initializer.Single(t => t.Name == name), dir);
        NodeProto Producer(string value) => g.Node.Single(n => n.Output.Contains(value));
        NodeProto Reader(string value, string op) => g.Node.Single(n => n.OpType == op && n.Input.Contains(value));
        var embed = g.Node.Single(n => n.OpType == "EmbedLayerNormalization");
        var attentions = g.Node.Where(n => n.OpType == "Attention").ToArray();
        var skips = g.Node.Where(n => n.OpType == "SkipLayerNormalization").ToArray();
        var gelus = g.Node.Where(n => n.OpType == "FastGelu").ToArray();
        float[][] Blocks(Func<int, string> name) =>
            Enumerable.Range(0, attentions.Length).Select(l => W(name(l))).ToArray();
        var heads = (int)attentions[0].Attribute.Single(a => a.Name == "num_heads").I;
        var epsilon = embed.Attribute.Single(a => a.Name == "epsilon").F;
        var lnFinal = W(skips[^1].Input[2]);
        var weights = new Gpt2Weights
        {
            TokenEmbedding = W(embed.Input[2]), PositionEmbedding = W(embed.Input[3]),
            Ln1Weight = Blocks(l => l == 0 ? embed.Input[5] : skips[2 * l - 1].Input[2]),
            Ln1Bias = Blocks(l => l == 0 ? embed.Input[6] : skips[2 * l - 1].Input[3]),
            QkvWeight = Blocks(l => attentions[l].Input[1]), QkvBias = Blocks(l => attentions[l].Input[2]),
            AttnOutWeight = Blocks(l => Reader(attentions[l].Output[0], "MatMul").Input[1]),
            AttnOutBias = Blocks(l => skips[2 * l].Input[4]),
            Ln2Weight = Blocks(l => skips[2 * l].Input[2]), Ln2Bias = Blocks(l => skips[2 * l].Input[3]),
            MlpInWeight = Blocks(l => Producer(gelus[l].Input[0]).Input[1]), MlpInBias = Blocks(l => gelus[l].Input[1]),
            MlpOutWeight = Blocks(l => Reader(gelus[l].Output[0], "MatMul").Input[1]),
            MlpOutBias = Blocks(l => skips[2 * l + 1].Input[4]),
            LnFinalWeight = lnFinal, LnFinalBias = W(skips[^1].Input[3]),
            Classifier = ClassifierOf(g, dir, lnFinal.Length),
        };
        return (Architecture(heads, epsilon, weights), weights);
    }

    /// <summary>The shape as the tensors give it; heads and epsilon come from the graph's attributes.</summary>
    private static ModelArchitecture Architecture(int heads, float epsilon, Gpt2Weights w)
    {
        var d = w.LnFinalWeight.Length;
        return new ModelArchitecture
        {
            Family = "gpt2", DModel = d, HiddenDim = w.MlpInBias[0].Length, Layers = w.QkvWeight.Length,
            Heads = heads, KvHeads = heads, VocabSize = w.Classifier.Length / d,
            ContextLength = w.PositionEmbedding.Length / d, Norm = NormKind.LayerNorm, NormEpsilon = epsilon,
            Mlp = MlpKind.Gelu, Positions = PositionEmbedding.Learned, TiedEmbeddings = false,
        };
    }

    /// <summary>The logits MatMul's weight [d_model, vocab], as lm_head stores it: [vocab, d_model].</summary>
    private static float[] ClassifierOf(GraphProto g, string dir, int dModel)
    {
        var lmHead = g.Node.Single(n => n.OpType == "MatMul" && n.Output[0] == "logits");
        var weight = Floats(g.Initializer.Single(t => t.Name == lmHead.Input[1]), dir);
        return Matrix.Transpose(weight, dModel, weight.Length / dModel);
    }

    public static float[] Floats(TensorProto tensor, string modelDirectory) =>
        MemoryMarshal.Cast<byte, float>(ExternalData.ReadBytes(tensor, modelDirectory)).ToArray();
}
