using System.Runtime.InteropServices;
using FeatureFlow.Onnx;
using FeatureFlow.Onnx.Ir;

namespace FeatureFlow.Testing;

/// <summary>One GPT-2 block's weights; matrices row-major [in, out] (y = x·W + b, as GPT-2's Conv1D stores them).</summary>
public sealed record Gpt2Block(
    float[] Ln1Weight, float[] Ln1Bias,
    float[] QkvWeight, float[] QkvBias,
    float[] AttnProjWeight, float[] AttnProjBias,
    float[] Ln2Weight, float[] Ln2Bias,
    float[] FcWeight, float[] FcBias,
    float[] MlpProjWeight, float[] MlpProjBias);

/// <summary>
/// GPT-2's weights as a third-party ONNX graph holds them, read straight from that graph's initializers (external data
/// included) by each export's own layout — independently of the hook inserter's structure recognition.
/// </summary>
public sealed record OnnxGpt2Weights(int DModel, int Heads, int Hidden, float Epsilon, float[] TokenTable, float[] PositionTable,
    IReadOnlyList<Gpt2Block> Blocks, float[] FinalNormWeight, float[] FinalNormBias, float[] Classifier, int Vocab)
{
    /// <summary>
    /// A torch.onnx export: initializers named after the PyTorch parameters (m.transformer.h.L.attn.c_attn.weight…),
    /// some as Identity aliases of equal tensors; the classifier is the logits MatMul's weight.
    /// </summary>
    public static OnnxGpt2Weights FromTorchExport(string graphPath, int heads)
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
            .Count(n => n.StartsWith("m.transformer.h.", StringComparison.Ordinal) && n.EndsWith(".attn.c_attn.weight", StringComparison.Ordinal));
        var blocks = Enumerable.Range(0, layers).Select(l => new Gpt2Block(
            W($"transformer.h.{l}.ln_1.weight"), W($"transformer.h.{l}.ln_1.bias"),
            W($"transformer.h.{l}.attn.c_attn.weight"), W($"transformer.h.{l}.attn.c_attn.bias"),
            W($"transformer.h.{l}.attn.c_proj.weight"), W($"transformer.h.{l}.attn.c_proj.bias"),
            W($"transformer.h.{l}.ln_2.weight"), W($"transformer.h.{l}.ln_2.bias"),
            W($"transformer.h.{l}.mlp.c_fc.weight"), W($"transformer.h.{l}.mlp.c_fc.bias"),
            W($"transformer.h.{l}.mlp.c_proj.weight"), W($"transformer.h.{l}.mlp.c_proj.bias"))).ToArray();
        var epsilon = g.Node.First(n => n.OpType == "LayerNormalization").Attribute.Single(a => a.Name == "epsilon").F;
        return Create(heads, epsilon, W("transformer.wte.weight"), W("transformer.wpe.weight"), blocks,
            W("transformer.ln_f.weight"), W("transformer.ln_f.bias"), ClassifierOf(g, dir));
    }

    /// <summary>
    /// ONNX Runtime's fused GPT-2, read in node order: EmbedLayerNormalization holds the token and position tables and
    /// block 0's ln_1; the L-th Attention the packed QKV weight and bias; the MatMul after it the attention projection;
    /// SkipLayerNormalization 2L the projection bias (its bias input) and ln_2, 2L+1 the MLP projection bias and the next
    /// ln_1 (the last one: ln_f); the L-th FastGelu the fc bias, with the fc MatMul before it and the projection after.
    /// </summary>
    public static OnnxGpt2Weights FromFusedExport(string graphPath)
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
        var (ln1Weight, ln1Bias) = (W(embed.Input[5]), W(embed.Input[6]));
        var blocks = new List<Gpt2Block>();
        for (var l = 0; l < attentions.Length; l++)
        {
            var proj = Reader(attentions[l].Output[0], "MatMul");
            var (attnSkip, mlpSkip) = (skips[2 * l], skips[2 * l + 1]);
            var fc = Producer(gelus[l].Input[0]);
            var mlpProj = Reader(gelus[l].Output[0], "MatMul");
            blocks.Add(new Gpt2Block(ln1Weight, ln1Bias,
                W(attentions[l].Input[1]), W(attentions[l].Input[2]),
                W(proj.Input[1]), W(attnSkip.Input[4]),
                W(attnSkip.Input[2]), W(attnSkip.Input[3]),
                W(fc.Input[1]), W(gelus[l].Input[1]),
                W(mlpProj.Input[1]), W(mlpSkip.Input[4])));
            (ln1Weight, ln1Bias) = (W(mlpSkip.Input[2]), W(mlpSkip.Input[3]));
        }
        var heads = (int)attentions[0].Attribute.Single(a => a.Name == "num_heads").I;
        var epsilon = embed.Attribute.Single(a => a.Name == "epsilon").F;
        return Create(heads, epsilon, W(embed.Input[2]), W(embed.Input[3]), blocks, ln1Weight, ln1Bias, ClassifierOf(g, dir));
    }

    private static OnnxGpt2Weights Create(int heads, float epsilon, float[] tokens, float[] positions, IReadOnlyList<Gpt2Block> blocks,
        float[] lnfWeight, float[] lnfBias, float[] classifier)
    {
        var d = lnfWeight.Length;
        return new OnnxGpt2Weights(d, heads, blocks[0].FcBias.Length, epsilon, tokens, positions, blocks, lnfWeight, lnfBias,
            classifier, classifier.Length / d);
    }

    private static float[] ClassifierOf(GraphProto g, string dir)
    {
        var lmHead = g.Node.Single(n => n.OpType == "MatMul" && n.Output[0] == "logits");
        return Floats(g.Initializer.Single(t => t.Name == lmHead.Input[1]), dir);
    }

    public static float[] Floats(TensorProto tensor, string modelDirectory) =>
        MemoryMarshal.Cast<byte, float>(ExternalData.ReadBytes(tensor, modelDirectory)).ToArray();
}
