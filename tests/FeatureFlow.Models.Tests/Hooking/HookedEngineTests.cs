using System.Text.Json;
using FeatureFlow.Engine;
using FeatureFlow.Steering;

namespace FeatureFlow.Models.Tests.Hooking;

/// <summary>
/// Our generation engine serves hooked third-party folders (row by row, <see cref="ConcatModelRunner"/>) and reproduces
/// the outputs shipped with those graphs; steering through the engine is the hooked graph's own steering.
/// </summary>
[Collection(HookedFixturesCollection.Name)]
public sealed class HookedEngineTests(HookedFixtures fixtures)
{
    private static readonly EngineOptions Cpu = new() { ExecutionProvider = ExecutionProviderPreference.Cpu };
    private static readonly SamplingOptions Greedy = new() { Temperature = 0f };

    /// <summary>Each of onnxruntime-genai's batch rows as its own request, run side by side.</summary>
    [Fact]
    public async Task Genai_gpt2_folder_reproduces_onnxruntime_genai_expected_greedy_sequences()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(RepoPaths.GenAiTinyGpt2, "expected.json")));
        var greedy = doc.RootElement.GetProperty("greedy");
        int[][] Rows(string name) => greedy.GetProperty(name).EnumerateArray().Select(r => r.EnumerateArray().Select(e => e.GetInt32()).ToArray()).ToArray();
        var (prompts, expected) = (Rows("input_ids"), Rows("expected_sequences"));
        var maxLength = greedy.GetProperty("max_length").GetInt32();
        using var engine = new GenerationEngine(fixtures.GenAi.Folder, Cpu);
        Assert.IsType<ConcatModelRunner>(engine.Runner);
        // BOS = EOS = 98 would end a generation early in our engine; the expected sequences never reach it.
        Assert.All(expected, e => Assert.DoesNotContain(engine.Tokenizer.EosId, e));
        var runs = await Task.WhenAll(prompts.Select(p => Run(engine, new GenerationRequest
        {
            PromptIds = p, MaxTokens = maxLength - p.Length, Sampling = Greedy,
        })));
        for (var row = 0; row < prompts.Length; row++)
            Assert.Equal(expected[row], prompts[row].Concat(runs[row].Ids).ToArray());
    }

    /// <summary>Prompt ids as the fixture gives them (no BOS), one greedy token each.</summary>
    [Fact]
    public async Task Torch_gpt2_folder_reproduces_all_24_reference_greedy_next_tokens()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(RepoPaths.TorchTinyGpt2, "REFERENCE_greedy_next_token.json")));
        var samples = doc.RootElement.GetProperty("samples").EnumerateArray().ToArray();
        Assert.Equal(24, samples.Length);
        using var engine = new GenerationEngine(fixtures.Torch.Folder, Cpu);
        foreach (var sample in samples)
        {
            var expected = sample.GetProperty("greedy_next_token_id").GetInt32();
            Assert.NotEqual(engine.Tokenizer.EosId, expected);
            var run = await Run(engine, new GenerationRequest
            {
                PromptIds = sample.GetProperty("prompt_token_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray(),
                MaxTokens = 1, Sampling = Greedy,
            });
            Assert.True(run.Ids.SequenceEqual([expected]), $"{sample.GetProperty("sample_id")}: got [{string.Join(", ", run.Ids)}]");
        }
    }

    /// <summary>
    /// An add term at a mid-layer site, through the engine: the log-probabilities move, and the greedy tokens and their
    /// log-probabilities are those of the un-adapted hooked graph with the same steering, run through its own I/O.
    /// </summary>
    [Theory]
    [InlineData("torch", new[] { 464, 2068, 7586, 21831 })]
    [InlineData("genai", new[] { 0, 0, 195, 731 })]
    public async Task A_steering_term_through_the_engine_equals_the_hooked_graph_steered_the_same_way(string family, int[] prompt)
    {
        var model = fixtures[family];
        var site = new Site(model.Architecture.Layers / 2, SiteKind.ResidPost);
        var direction = Numerics.RandomVector(new Random(21), model.Architecture.DModel, 2f);
        var spec = new SteeringSpec([new SteeringTerm(site, SteeringOperation.Add, 1.5f, new FeatureVector(direction))]);
        using var engine = new GenerationEngine(model.Folder, Cpu);
        const int tokens = 5;
        var steered = await Run(engine, new GenerationRequest { PromptIds = prompt, MaxTokens = tokens, Sampling = Greedy, Steering = spec });
        var unsteered = await Run(engine, new GenerationRequest { PromptIds = prompt, MaxTokens = tokens, Sampling = Greedy });
        Assert.Equal(tokens, steered.Ids.Count);
        Assert.True(steered.LogProbs.Zip(unsteered.LogProbs, (a, b) => Math.Abs(a - b)).Max() > 1e-2,
            $"{family}: steering left the log-probabilities as they were");

        var plan = engine.Compiler.Compile(spec);
        using var graph = model.Unadapted();
        var (ids, logProbs) = (new List<int>(), new List<double>());
        var logits = graph.Step(prompt, [plan.Prompt]);
        var vocab = model.Architecture.VocabSize;
        while (ids.Count < tokens)
        {
            var last = logits.AsSpan(logits.Length - vocab, vocab);
            var next = Numerics.ArgMax(last);
            var max = last[next];
            var sum = 0.0;
            foreach (var l in last) sum += Math.Exp(l - max);
            ids.Add(next);
            logProbs.Add(-Math.Log(sum));
            logits = graph.Step([next], [plan.Generated]);
        }
        Assert.Equal(ids, steered.Ids);
        for (var t = 0; t < tokens; t++)
            Assert.True(Math.Abs(logProbs[t] - steered.LogProbs[t]) <= 1e-4, $"{family} token {t}: {steered.LogProbs[t]} vs {logProbs[t]}");
    }

    internal static async Task<(List<int> Ids, List<float> LogProbs)> Run(GenerationEngine engine, GenerationRequest request)
    {
        var (ids, logProbs) = (new List<int>(), new List<float>());
        await foreach (var u in engine.GenerateAsync(request))
        {
            ids.AddRange(u.TokenIds);
            logProbs.AddRange(u.LogProbs);
        }
        return (ids, logProbs);
    }
}
