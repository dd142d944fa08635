using System.Text.Json.Nodes;
using FeatureFlow.Engine;
using FeatureFlow.Models.Folder;
using FeatureFlow.Models.HuggingFace;
using FeatureFlow.Models.Tests.HuggingFace;

namespace FeatureFlow.Models.Tests.Gemma2;

/// <summary>
/// A Gemma2ForCausalLM checkpoint through <c>featureflow export --hf</c>: the folder opens, the engine serves it
/// (batched graphs with GroupQueryAttention's window and soft-cap), and its greedy tokens are the reference pass's.
/// </summary>
public sealed class Gemma2HfExportTests : IDisposable
{
    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    private string Checkpoint()
    {
        var dir = _temp.Sub("checkpoint");
        TinyGemma2.Write(dir, TinyGemma2.Config());
        var vocab = new JsonObject();
        for (var i = 0; i < TinyGemma2.Vocab; i++) vocab[$"<{i}>"] = i;
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), new JsonObject
        {
            ["version"] = "1.0",
            ["model"] = new JsonObject { ["type"] = "BPE", ["vocab"] = vocab, ["merges"] = new JsonArray() },
        }.ToJsonString());
        return dir;
    }

    [Fact]
    public async Task An_exported_gemma2_folder_is_served_with_the_reference_pass_s_greedy_tokens()
    {
        var output = _temp.Sub("out");
        ModelFolderExporter.ExportHuggingFace(new HuggingFaceExportRequest
        {
            CheckpointDirectory = Checkpoint(), OutputDirectory = output, ModelName = "tiny-gemma2",
        });
        var folder = ModelFolder.Open(output);
        Assert.Equal("gemma2", folder.Manifest.Architecture.Family);
        Assert.Equal(TinyGemma2.HeadDim, folder.Manifest.Architecture.HeadSize);
        Assert.NotNull(folder.BatchedGraphPath);

        // Greedy decoding by the reference pass, past the sliding window.
        var checkpoint = TinyGemma2.Read(_temp.Sub("checkpoint"));
        var reference = new Gemma2Reference(checkpoint.Config, checkpoint.Weights);
        int[] prompt = TinyGemma2.Sequence[..3];
        var expected = new List<int>();
        float[] logits = [];
        for (var pos = 0; pos < prompt.Length + 9; pos++)
        {
            var token = pos < prompt.Length ? prompt[pos] : expected[^1];
            logits = reference.Forward(token, pos);
            if (pos >= prompt.Length - 1) expected.Add(Array.IndexOf(logits, logits.Max()));
        }
        expected = expected.TakeWhile(t => t is not (1 or 2)).ToList(); // the engine ends at BOS/EOS
        Assert.True(expected.Count >= 6, $"the reference stops after {expected.Count} tokens; pick another prompt");

        using var engine = new GenerationEngine(folder, new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu });
        Assert.IsType<ModelRunner>(engine.Runner);
        var ids = new List<int>();
        await foreach (var u in engine.GenerateAsync(new GenerationRequest
        {
            PromptIds = prompt, MaxTokens = expected.Count, Sampling = new SamplingOptions { Temperature = 0f },
        }))
            ids.AddRange(u.TokenIds);
        Assert.Equal(expected, ids);
    }

    [Fact]
    public void A_gemma2_config_error_names_the_field_and_leaves_no_folder()
    {
        var dir = Checkpoint();
        var config = TinyGemma2.Config();
        config.Remove("query_pre_attn_scalar");
        File.WriteAllText(Path.Combine(dir, "config.json"), config.ToJsonString());
        var output = _temp.Sub("refused");
        var e = Assert.Throws<InvalidDataException>(() => ModelFolderExporter.ExportHuggingFace(new HuggingFaceExportRequest
        {
            CheckpointDirectory = dir, OutputDirectory = output, ModelName = "tiny-gemma2",
        }));
        Assert.Contains("query_pre_attn_scalar", e.Message);
        Assert.False(Directory.Exists(output) && Directory.EnumerateFileSystemEntries(output).Any());
    }
}
