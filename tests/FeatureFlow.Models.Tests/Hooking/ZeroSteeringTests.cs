using System.Text.Json;
using FeatureFlow.Onnx;

namespace FeatureFlow.Models.Tests.Hooking;

/// <summary>With every steering input zero, a hooked third-party graph is the graph it came from.</summary>
[Collection(HookedFixturesCollection.Name)]
public class ZeroSteeringTests(HookedFixtures fixtures)
{
    public static TheoryData<string> Graphs => new() { "hooked", "plain" };

    /// <summary>The folder's graphs, on our interface: the hooked one with zero steering, and the plain one.</summary>
    [Theory]
    [MemberData(nameof(Graphs))]
    public void Genai_folder_graph_reproduces_onnxruntime_genai_expected_greedy_sequences(string graph)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(RepoPaths.GenAiTinyGpt2, "expected.json")));
        var greedy = doc.RootElement.GetProperty("greedy");
        int[][] Rows(string name) => greedy.GetProperty(name).EnumerateArray().Select(r => r.EnumerateArray().Select(e => e.GetInt32()).ToArray()).ToArray();
        var prompts = Rows("input_ids");
        using var runner = graph == "hooked" ? fixtures.GenAi.Hooked(batch: prompts.Length) : fixtures.GenAi.Plain(batch: prompts.Length);
        Assert.Equal(graph == "hooked", runner.SteeringShape is not null);
        var sequences = runner.Greedy(prompts, greedy.GetProperty("max_length").GetInt32());
        Assert.Equal(Rows("expected_sequences"), sequences);
    }

    [Theory]
    [MemberData(nameof(Graphs))]
    public void Torch_graph_reproduces_all_24_reference_greedy_next_tokens(string graph)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(RepoPaths.TorchTinyGpt2, "REFERENCE_greedy_next_token.json")));
        var samples = doc.RootElement.GetProperty("samples").EnumerateArray().ToArray();
        Assert.Equal(24, samples.Length);
        foreach (var sample in samples)
        {
            var prompt = sample.GetProperty("prompt_token_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
            using var runner = graph == "hooked" ? fixtures.Torch.Hooked() : fixtures.Torch.Plain();
            var next = runner.Greedy([prompt], prompt.Length + 1)[0][^1];
            Assert.True(sample.GetProperty("greedy_next_token_id").GetInt32() == next, $"{sample.GetProperty("sample_id")}: got {next}");
        }
    }

    public static TheoryData<string> Families => new() { "torch", "genai" };

    [Theory]
    [MemberData(nameof(Families))]
    public void Zero_steering_hooked_logits_equal_the_original_graphs_over_a_prompt_and_a_continuation(string family)
    {
        var model = fixtures[family];
        using var hooked = model.Hooked(batch: 2);
        using var plain = model.Source(batch: 2);
        int[][] steps = [[5, 17, 3, 9, 41, 2], [7, 11]];
        foreach (var tokens in steps)
        {
            var expected = plain.Step(tokens);
            var actual = hooked.Step(tokens);
            Assert.Equal(expected.Length, actual.Length);
            var worst = expected.Zip(actual, (e, a) => Math.Abs(e - a)).Max();
            Assert.True(worst <= 1e-6, $"{family}: logits differ by up to {worst}");
        }
    }

    [Fact]
    public void The_fused_graph_is_hooked_through_split_skip_layer_norms_and_keeps_no_fused_one()
    {
        var hooking = fixtures.GenAi.Hooking;
        Assert.Equal("onnxruntime-fused-gpt2", hooking.Family);
        Assert.Equal(10, hooking.Rewrites.Count);
        Assert.All(hooking.Rewrites, r => Assert.Contains("SkipLayerNormalization", r));
        Assert.Equal(11, hooking.OpsetRaisedFrom);
        var graph = OnnxModelFile.Read(fixtures.GenAi.Folder.HookedGraphPath).Graph;
        Assert.DoesNotContain(graph.Node, n => n.OpType == "SkipLayerNormalization");
        Assert.Equal(10, graph.Node.Count(n => n.OpType == "LayerNormalization"));
        Assert.Equal(5, graph.Node.Count(n => n.OpType == "Attention"));
    }
}
