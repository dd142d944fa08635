using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using FeatureFlow.Models.Folder;
using FeatureFlow.Models.HuggingFace;
using FeatureFlow.Onnx;
using FeatureFlow.Steering;

namespace FeatureFlow.Models.Tests.HuggingFace;

/// <summary>
/// GPT2LMHeadModel through --hf: the weights of a third-party torch.onnx GPT-2 export, written back as the Hugging
/// Face checkpoint they came from, must reproduce that export's logits; and a larger random GPT-2 must match a plain
/// C# forward pass written from transformers' equations, steered at each kind of site, in all four graphs.
/// </summary>
public class HfGpt2ExportTests : IDisposable
{
    private readonly TempFolder _temp = new();

    /// <summary>
    /// The torch export's initializers under their Hugging Face names ("m." dropped). torch.onnx stored each
    /// distinct tensor once and gave duplicates (equal LayerNorm weights, zero biases) as Identity nodes: those are
    /// the same tensor under a second name.
    /// </summary>
    private HfCheckpointWriter TorchTinyGpt2Checkpoint(string directory)
    {
        var model = OnnxModelFile.Read(Path.Combine(RepoPaths.TorchTinyGpt2, "model.onnx"));
        var tensors = model.Graph.Initializer.ToDictionary(t => t.Name, t => (
            Values: t.FloatData.Count > 0 ? t.FloatData.ToArray() : MemoryMarshal.Cast<byte, float>(t.RawData.Span).ToArray(),
            Shape: t.Dims.ToArray()));
        foreach (var alias in model.Graph.Node.Where(n => n.OpType == "Identity" && tensors.ContainsKey(n.Input[0])))
            tensors[alias.Output[0]] = tensors[alias.Input[0]];
        var writer = new HfCheckpointWriter(directory)
        {
            Config = JsonNode.Parse(File.ReadAllText(Path.Combine(RepoPaths.TorchTinyGpt2, "config.json")))!.AsObject(),
        };
        foreach (var (name, (values, shape)) in tensors.Where(t => t.Key.StartsWith("m.transformer.", StringComparison.Ordinal)))
            writer.Tensor(name["m.".Length..], values, shape);
        foreach (var file in new[] { "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json" })
            writer.File(file, File.ReadAllText(Path.Combine(RepoPaths.TorchTinyGpt2, file)));
        return writer;
    }

    private ModelFolder Export(string checkpoint, ExternalWeights external = ExternalWeights.Never)
    {
        var output = _temp.Sub("out-" + Path.GetFileName(checkpoint));
        ModelFolderExporter.ExportHuggingFace(new HuggingFaceExportRequest
        {
            CheckpointDirectory = checkpoint, OutputDirectory = output, ExternalWeights = external,
        });
        return ModelFolder.Open(output);
    }

    private static int[][] TorchPrompts()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(RepoPaths.TorchTinyGpt2,
            "REFERENCE_greedy_next_token.json")));
        return doc.RootElement.GetProperty("samples").EnumerateArray().Take(4)
            .Select(s => s.GetProperty("prompt_token_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray()).ToArray();
    }

    [Fact]
    public void The_torch_exports_weights_as_a_checkpoint_reproduce_its_logits_in_the_plain_and_hooked_graphs()
    {
        var folder = Export(TorchTinyGpt2Checkpoint(_temp.Sub("tiny-gpt2")).Write());
        var arch = folder.Manifest.Architecture;
        Assert.Equal((2, 2, 2, 1, 50257), (arch.Layers, arch.DModel, arch.Heads, arch.HeadSize, arch.VocabSize));
        Assert.Equal(("hf", 50256, 50256), (folder.Manifest.Tokenizer.Format, folder.Manifest.Tokenizer.BosId,
            folder.Manifest.Tokenizer.EosId));
        Assert.True(File.Exists(Path.Combine(folder.Directory, "tokenizer_config.json")));
        // Head size 1: ONNX Runtime's GroupQueryAttention needs a multiple of 8, so only the Concat graphs exist.
        Assert.Null(folder.BatchedGraphPath);
        Assert.Null(folder.BatchedPlainGraphPath);
        var torchGraph = Path.Combine(RepoPaths.TorchTinyGpt2, "model.onnx");
        int[] follow = [464, 3290, 13, 50256, 11, 7];
        foreach (var prompt in TorchPrompts())
        {
            // The model is near-uniform (top-1 margins ~1e-8), so logits are compared, not argmax.
            var expected = GraphRuns.Concat(torchGraph, arch, prompt, follow);
            var runs = new Dictionary<string, List<float[]>>
            {
                ["plain"] = GraphRuns.Concat(folder.PlainGraphPath, arch, prompt, follow),
                ["hooked"] = GraphRuns.Concat(folder.HookedGraphPath, arch, prompt, follow),
            };
            foreach (var (graph, actual) in runs)
                for (var step = 0; step < expected.Count; step++)
                {
                    var rel = Numerics.RelativeL2(actual[step], expected[step]);
                    Assert.True(rel <= 1e-4, $"{graph} graph, prompt of {prompt.Length}, step {step}: relative L2 {rel:E2}");
                }
        }
    }

    private static readonly ModelArchitecture RandomArch = new()
    {
        Family = "gpt2", DModel = 32, HiddenDim = 128, Layers = 3, Heads = 4, KvHeads = 4, VocabSize = 96,
        ContextLength = 64, Norm = NormKind.LayerNorm, NormEpsilon = 1e-5f, Mlp = MlpKind.Gelu,
        Positions = PositionEmbedding.Learned,
    };

    private static FeatureVector Feature(int seed, float threshold = 0f)
    {
        var rng = new Random(seed);
        var v = Numerics.RandomVector(rng, RandomArch.DModel);
        var norm = MathF.Sqrt(v.Sum(x => x * x));
        return new FeatureVector(v.Select(x => x / norm).ToArray(), Numerics.RandomVector(rng, RandomArch.DModel, 0.5f),
            0.1f, threshold);
    }

    private static readonly Dictionary<string, SteeringTerm[]> Interventions = new()
    {
        ["none"] = [],
        ["add at blocks.1.hook_attn_out"] = [new(new Site(1, SiteKind.AttnOut), SteeringOperation.Add, 3f, Feature(1))],
        ["rescale r=-2 at blocks.2.hook_mlp_out"] =
            [new(new Site(2, SiteKind.MlpOut), SteeringOperation.Rescale, -2f, Feature(2))],
        ["clamp c=3 (JumpReLU 0.2) at blocks.0.hook_resid_post"] =
            [new(new Site(0, SiteKind.ResidPost), SteeringOperation.Clamp, 3f, Feature(3, threshold: 0.2f))],
        ["several sites"] =
        [
            new(new Site(0, SiteKind.AttnOut), SteeringOperation.Add, 1.5f, Feature(4)),
            new(new Site(1, SiteKind.MlpOut), SteeringOperation.Rescale, 0f, Feature(5)),
            new(new Site(2, SiteKind.ResidPost), SteeringOperation.Clamp, 2f, Feature(6, threshold: 0.1f)),
        ],
    };

    public static TheoryData<string, string, bool> RandomCases()
    {
        var cases = new TheoryData<string, string, bool>();
        foreach (var name in Interventions.Keys) cases.Add(name, "transformer.", true);
        cases.Add("several sites", "", false); // saved from GPT2Model (no prefix), with an untied lm_head
        return cases;
    }

    [Theory]
    [MemberData(nameof(RandomCases))]
    public void A_random_gpt2_matches_the_reference_forward_pass_with_steering(string intervention, string prefix, bool tied)
    {
        var arch = RandomArch with { TiedEmbeddings = tied };
        var weights = HfTestCheckpoints.RandomGpt2(arch, seed: 11);
        var writer = HfTestCheckpoints.Gpt2(arch, weights, _temp.Sub("random" + (tied ? "" : "-untied")), prefix);
        var folder = Export(writer.Write(shards: tied ? 1 : 2), tied ? ExternalWeights.Never : ExternalWeights.Always);
        Assert.Equal(arch, folder.Manifest.Architecture);
        var shape = new SteeringShape(arch.Layers, arch.DModel, folder.Manifest.Steering.SlotsPerSite);
        var steering = new SteeringCompiler(shape).Compile(new SteeringSpec(Interventions[intervention])).Prompt;

        int[] prompt = [5, 17, 3, 88, 42, 9];
        int[] follow = [60, 2, 95, 31, 31, 7, 0, 44];
        var hooked = GraphRuns.Concat(folder.HookedGraphPath, arch, prompt, follow, steering);
        var batched = GraphRuns.Batched(folder, prompt, follow, steering);
        var plain = intervention == "none" ? GraphRuns.Concat(folder.PlainGraphPath, arch, prompt, follow) : null;
        var reference = new Gpt2Reference(arch, weights);
        var unsteered = new Gpt2Reference(arch, weights);
        int[] tokens = [.. prompt, .. follow];
        var effect = 0.0;
        for (var pos = 0; pos < tokens.Length; pos++)
        {
            var expected = reference.Forward(tokens[pos], steering);
            effect = Math.Max(effect, Numerics.RelativeL2(expected, unsteered.Forward(tokens[pos])));
            var step = Math.Max(0, pos - prompt.Length + 1);
            float[] At(List<float[]> run) => pos < prompt.Length ? run[0].AsSpan(pos * arch.VocabSize, arch.VocabSize).ToArray() : run[step];
            var graphs = new List<(string, float[])> { ("hooked", At(hooked)) };
            if (plain is not null) graphs.Add(("plain", At(plain)));
            if (pos >= prompt.Length - 1) graphs.Add(("batched", batched[step]));
            foreach (var (graph, actual) in graphs)
            {
                var rel = Numerics.RelativeL2(actual, expected);
                Assert.True(rel <= 1e-4, $"{intervention}: {graph} graph at position {pos}: relative L2 {rel:E2}");
            }
        }
        // A steered case must move the logits, or agreeing with the reference would prove nothing about the hooks.
        Assert.True(intervention == "none" ? effect == 0 : effect > 1e-2, $"{intervention}: steering effect {effect:E2}");
    }

    public void Dispose() => _temp.Dispose();
}
