using System.Text.Json.Nodes;
using FeatureFlow.Engine;
using FeatureFlow.Models.Folder;

namespace FeatureFlow.GenAi.Tests;

/// <summary>
/// Our engine on the shipped folder, and GenAiBackend on a copy of its hooked graph (decoder_hooked.onnx, the
/// same weights with the four steering inputs) under a genai_config.json that points GenAI at it.
/// </summary>
public sealed class GenAiBackendFixture : IDisposable
{
    private readonly string _directory;

    public GenAiBackendFixture()
    {
        Folder = ModelFolder.Open(RepoPaths.Stories260kModel);
        Engine = new GenerationEngine(Folder, new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu });
        _directory = Directory.CreateTempSubdirectory("featureflow-genai-hooked-").FullName;
        var hooked = Path.GetFileName(Folder.HookedGraphPath);
        File.Copy(Folder.HookedGraphPath, Path.Combine(_directory, hooked));
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(Folder.Directory, GenAiConfig.FileName)))!;
        config["model"]!["decoder"]!["filename"] = hooked;
        File.WriteAllText(Path.Combine(_directory, GenAiConfig.FileName), config.ToJsonString());
        Hooked = new GenAiBackend(_directory, Engine.Tokenizer);
        Plain = new GenAiBackend(Folder.Directory, Engine.Tokenizer);
    }

    public ModelFolder Folder { get; }
    public GenerationEngine Engine { get; }
    /// <summary>GenAI on the hooked graph.</summary>
    public GenAiBackend Hooked { get; }
    /// <summary>GenAI on the shipped folder's own genai_config.json: the plain graph, without steering inputs.</summary>
    public GenAiBackend Plain { get; }

    public void Dispose()
    {
        Hooked.Dispose();
        Plain.Dispose();
        Engine.Dispose();
        Directory.Delete(_directory, recursive: true);
    }
}

public static class GenerationStreams
{
    public static async Task<(List<int> Ids, string Text, GenerationUpdate Last)> CollectAsync(
        this IAsyncEnumerable<GenerationUpdate> updates)
    {
        var ids = new List<int>();
        var text = new System.Text.StringBuilder();
        GenerationUpdate? last = null;
        await foreach (var update in updates)
        {
            ids.AddRange(update.TokenIds);
            text.Append(update.Text);
            last = update;
        }
        return (ids, text.ToString(), last!);
    }
}
