using FeatureFlow.Models.Folder;
using FeatureFlow.Onnx;

namespace FeatureFlow.Engine.Tests;

/// <summary>
/// A folder whose graphs share one weights file is served through <see cref="SharedWeights"/>: every session gets
/// the same mapped initializers and one container of packed weights. The inline shipped folder is the reference.
/// </summary>
public sealed class SharedWeightsTests(EngineFixture f) : IClassFixture<EngineFixture>, IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("featureflow-shared-weights-").FullName;

    public void Dispose() => Directory.Delete(_root, recursive: true);

    /// <summary>stories260K exported again with its weights in one external file (the shipped folder keeps them inline).</summary>
    private ModelFolder ExportExternal(string name = "external")
    {
        var output = Path.Combine(_root, name);
        ModelFolderExporter.ExportLlama2c(new Llama2cExportRequest
        {
            CheckpointPath = Path.Combine(f.Folder.Directory, "stories260K.bin"),
            TokenizerPath = Path.Combine(f.Folder.Directory, "tok512.bin"),
            OutputDirectory = output, ModelName = "stories260k", ExternalWeights = ExternalWeights.Always,
        });
        return ModelFolder.Open(output);
    }

    [Fact]
    public async Task A_folder_with_one_weights_file_generates_the_inline_folders_tokens_and_log_probabilities()
    {
        var folder = ExportExternal();
        Assert.NotNull(folder.WeightsPath);
        Assert.Null(f.Folder.WeightsPath);
        using var engine = new GenerationEngine(folder, EngineFixture.Options);
        Assert.EndsWith("in weights.data, mapped once and packed once for every graph", engine.WeightSharing);
        Assert.StartsWith("inline in each graph", f.Engine.WeightSharing);
        // Every kind of steering, sampled and greedy; the same weights packed the same way give the same bits.
        foreach (var request in BatchingTests.MixedRequests(f.Engine, 7))
        {
            var expected = await BatchingTests.Run(f.Engine, request);
            var actual = await BatchingTests.Run(engine, request);
            Assert.Equal(expected.Ids, actual.Ids);
            Assert.Equal(expected.LogProbs, actual.LogProbs);
        }
        foreach (var c in RunCReference.Cases)
            Assert.Equal(c.SampledIds, (await engine.CollectAsync(new GenerationRequest
            {
                PromptIds = c.PromptIds, MaxTokens = c.SampledIds.Length, Sampling = new SamplingOptions { Temperature = 0f },
            })).Ids);
    }

    [Fact]
    public void Every_external_initializer_of_the_batched_graphs_is_shared_once()
    {
        var folder = ExportExternal();
        string[] graphs = [folder.BatchedGraphPath!, folder.BatchedPlainGraphPath!];
        using var weights = SharedWeights.Open(graphs)!;
        var external = graphs.SelectMany(g => OnnxModelFile.Read(g).Graph.Initializer)
            .Where(ExternalData.IsExternal).GroupBy(t => t.Name).ToArray();
        Assert.Equal(external.Length, weights.Count);
        Assert.Equal(external.Sum(g => g.First().Dims.Aggregate(4L, (a, b) => a * b)), weights.Bytes);
        Assert.Null(SharedWeights.Open([f.Folder.BatchedGraphPath!])); // inline weights: nothing to share
    }

    [Fact]
    public void A_missing_empty_or_short_weights_file_is_refused_naming_it()
    {
        var folder = ExportExternal("broken");
        var data = folder.WeightsPath!;
        var bytes = File.ReadAllBytes(data);
        File.WriteAllBytes(data, bytes[..(bytes.Length / 2)]);
        var shortFile = Assert.Throws<InvalidDataException>(() => new GenerationEngine(folder, EngineFixture.Options));
        Assert.Contains("lies beyond the end of weights.data", shortFile.Message);

        File.WriteAllBytes(data, []);
        var empty = Assert.Throws<InvalidDataException>(() => new GenerationEngine(folder, EngineFixture.Options));
        Assert.Contains("weights.data is empty", empty.Message);

        File.Delete(data);
        var missing = Assert.Throws<FileNotFoundException>(() => new GenerationEngine(folder, EngineFixture.Options));
        Assert.Contains("weights.data is missing", missing.Message);
    }
}
