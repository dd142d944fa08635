using FeatureFlow.Engine;
using FeatureFlow.Models;
using FeatureFlow.Models.Export;
using FeatureFlow.Models.Folder;
using FeatureFlow.Models.Hooking;
using FeatureFlow.Models.Llama2c;
using FeatureFlow.Onnx;
using FeatureFlow.Steering;

namespace FeatureFlow.GenAi.Tests;

/// <summary>
/// A model-builder-style graph (our exporter's fused-operator variant of stories260K: SimplifiedLayerNormalization,
/// SkipSimplifiedLayerNormalization, RotaryEmbedding, MultiHeadAttention) with hooks inserted by
/// <c>featureflow hook</c>'s <see cref="GraphHooker"/>, run by ONNX Runtime GenAI's loop (GenAiBackend) and by our
/// engine (row by row, as it serves hooked third-party graphs): the same greedy tokens, steered or not.
/// </summary>
public sealed class ModelBuilderGraphTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("featureflow-model-builder-").FullName;
    private readonly ModelFolder _folder;

    public ModelBuilderGraphTests()
    {
        var shipped = ModelFolder.Open(RepoPaths.Stories260kModel);
        var checkpoint = Llama2cCheckpoint.Read(Path.Combine(shipped.Directory, "stories260K.bin"));
        var fused = LlamaGraphExporter.Export(checkpoint.Architecture, checkpoint.Weights,
            new HookedGraphOptions { Hooks = false, SiteOutputs = false, Operators = OperatorSet.Fused }, "fused");
        OnnxModelFile.Write(fused, Path.Combine(_dir, "model.onnx"));
        OnnxModelFile.Write(GraphHooker.Hook(fused, new HookOptions()).Model, Path.Combine(_dir, "model_hooked.onnx"));
        var manifest = shipped.Manifest with
        {
            Graphs = new GraphEntry("model_hooked.onnx", "model.onnx"),
        };
        File.WriteAllText(Path.Combine(_dir, ModelManifest.FileName), manifest.ToJson());
        File.Copy(shipped.TokenizerPath, Path.Combine(_dir, manifest.Tokenizer.File));
        File.WriteAllText(Path.Combine(_dir, GenAiConfig.FileName), GenAiConfig.Write(checkpoint.Architecture,
            "model.onnx", manifest.Tokenizer.BosId, manifest.Tokenizer.EosId));
        _folder = ModelFolder.Open(_dir);
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static FeatureVector Feature(int seed)
    {
        var v = Numerics.RandomVector(new Random(seed), 64);
        var norm = MathF.Sqrt(v.Sum(x => x * x));
        return new FeatureVector(v.Select(x => x / norm).ToArray(), Numerics.RandomVector(new Random(seed + 1), 64, 0.5f), 0.1f);
    }

    public static TheoryData<string> Prompts() => new("", "Once upon a time", "The little dog");

    [Theory]
    [MemberData(nameof(Prompts))]
    public async Task GenAi_and_our_engine_give_the_same_greedy_tokens_with_and_without_steering(string prompt)
    {
        var cpu = new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu };
        using var engine = new GenerationEngine(_folder, cpu);
        Assert.IsType<ConcatModelRunner>(engine.Runner);
        using var genAi = new GenAiBackend(_dir, engine.Tokenizer,
            new GenAiBackendOptions { DecoderFile = _folder.Manifest.Graphs.Hooked });
        SteeringSpec steered = new(
        [
            new SteeringTerm(new Site(2, SiteKind.ResidPost), SteeringOperation.Add, 6f, Feature(1)),
            new SteeringTerm(new Site(1, SiteKind.MlpOut), SteeringOperation.Rescale, -2f, Feature(3)),
            new SteeringTerm(new Site(3, SiteKind.AttnOut), SteeringOperation.Clamp, 3f, Feature(5)),
        ]);
        var results = new List<IReadOnlyList<int>>();
        foreach (var steering in new[] { SteeringSpec.None, steered })
        {
            var request = new GenerationRequest
            {
                PromptIds = engine.EncodePrompt(prompt), MaxTokens = 48,
                Sampling = new SamplingOptions { Temperature = 0f }, Steering = steering,
            };
            var ours = await engine.GenerateAsync(request).CollectAsync();
            var theirs = await genAi.GenerateAsync(request).CollectAsync();
            Assert.Equal(ours.Ids, theirs.Ids);
            results.Add(ours.Ids);
        }
        Assert.NotEqual(results[0], results[1]);
    }
}
