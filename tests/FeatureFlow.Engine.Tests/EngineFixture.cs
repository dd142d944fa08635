using FeatureFlow.Models.Folder;
using FeatureFlow.Models.Llama2c;

namespace FeatureFlow.Engine.Tests;

/// <summary>The shipped model loaded once per test class: the engine, the plain-operator graphs and the reference pass's weights.</summary>
public sealed class EngineFixture : IDisposable
{
    public EngineFixture()
    {
        Folder = ModelFolder.Open(RepoPaths.Stories260kModel);
        Engine = new GenerationEngine(Folder, Options);
        Hooked = new HookedDecoder(Folder.HookedGraphPath, Folder.Manifest.Architecture, Options);
        Plain = new HookedDecoder(Folder.PlainGraphPath, Folder.Manifest.Architecture, Options);
        Checkpoint = Llama2cCheckpoint.Read(Path.Combine(Folder.Directory, Folder.Manifest.Provenance.Checkpoint.File));
    }

    public static EngineOptions Options { get; } = new() { ExecutionProvider = ExecutionProviderPreference.Cpu };

    /// <summary>
    /// A sampled story that runs to its 400 tokens (no EOS on the way), for tests that need a row to keep decoding
    /// while they act on it; a greedy story from BOS ends after ~100 tokens, which a busy machine can pass unseen.
    /// </summary>
    public static GenerationRequest LongStory { get; } = new()
    {
        PromptIds = [1], MaxTokens = 400, Sampling = new SamplingOptions { Temperature = 1f, TopP = 0.9f, Seed = 6 },
    };
    public ModelFolder Folder { get; }
    public GenerationEngine Engine { get; }
    /// <summary>The plain-operator hooked graph, the reference the batched graph is checked against.</summary>
    public HookedDecoder Hooked { get; }
    public HookedDecoder Plain { get; }
    public Models.LoadedCheckpoint Checkpoint { get; }

    public void Dispose()
    {
        Engine.Dispose();
        Hooked.Dispose();
        Plain.Dispose();
    }
}

public static class EngineExtensions
{
    public static async Task<(List<int> Ids, string Text, GenerationUpdate Last)> CollectAsync(this GenerationEngine engine, GenerationRequest request, CancellationToken ct = default)
    {
        var ids = new List<int>();
        var text = new System.Text.StringBuilder();
        GenerationUpdate? last = null;
        await foreach (var u in engine.GenerateAsync(request, ct))
        {
            ids.AddRange(u.TokenIds);
            text.Append(u.Text);
            last = u;
        }
        return (ids, text.ToString(), last!);
    }
}
