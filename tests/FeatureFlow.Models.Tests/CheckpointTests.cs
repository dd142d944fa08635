using FeatureFlow.Models.Llama2c;

namespace FeatureFlow.Models.Tests;

public class CheckpointTests
{
    private static string CheckpointPath => Path.Combine(RepoPaths.Stories260kModel, "stories260K.bin");

    [Fact]
    public void Reads_the_stories260k_header_and_the_published_hash()
    {
        var c = Llama2cCheckpoint.Read(CheckpointPath);
        var a = c.Architecture;
        Assert.Equal((64, 172, 5, 8, 4, 512, 512), (a.DModel, a.HiddenDim, a.Layers, a.Heads, a.KvHeads, a.VocabSize, a.ContextLength));
        Assert.True(a.TiedEmbeddings);
        Assert.Equal(8, a.HeadSize);
        Assert.Equal("b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696", c.Sha256);
        Assert.Same(c.Weights.TokenEmbedding, c.Weights.Classifier);
    }

    [Fact]
    public void Reference_forward_pass_reproduces_run_c_greedy_tokens()
    {
        // The oracle used for every graph is itself checked against llama2.c's own output.
        var c = RunCReference.Case("greedy_prompt_once_upon_a_time");
        var model = new ReferenceTransformer(Llama2cCheckpoint.Read(CheckpointPath));
        var token = c.PromptIds[0];
        var produced = new List<int>();
        for (var pos = 0; pos < c.GeneratedInOrder.Length; pos++)
        {
            var logits = model.Forward(token, pos);
            var next = pos + 1 < c.PromptIds.Length ? c.PromptIds[pos + 1] : Numerics.ArgMax(logits);
            produced.Add(next);
            token = next;
        }
        Assert.Equal(c.GeneratedInOrder, produced);
    }

    [Fact]
    public void Truncated_checkpoint_is_a_clear_error()
    {
        var path = Path.GetTempFileName();
        File.WriteAllBytes(path, File.ReadAllBytes(CheckpointPath)[..5000]);
        var e = Assert.Throws<InvalidDataException>(() => Llama2cCheckpoint.Read(path));
        Assert.Contains("truncated", e.Message);
        Assert.Contains(path, e.Message);
        File.Delete(path);
    }

    [Fact]
    public void Missing_checkpoint_names_the_path()
    {
        var e = Assert.Throws<FileNotFoundException>(() => Llama2cCheckpoint.Read("/nonexistent/model.bin"));
        Assert.Contains("/nonexistent/model.bin", e.Message);
    }
}
