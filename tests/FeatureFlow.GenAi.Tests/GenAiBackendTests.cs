using FeatureFlow.Engine;
using FeatureFlow.Models;
using FeatureFlow.Steering;
using FeatureFlow.Steering.Packs;

namespace FeatureFlow.GenAi.Tests;

/// <summary>GenAiBackend (ONNX Runtime GenAI's loop with our steering inputs) against our engine.</summary>
public class GenAiBackendTests(GenAiBackendFixture f) : IClassFixture<GenAiBackendFixture>
{
    private static readonly SamplingOptions Greedy = new() { Temperature = 0f };
    private const int Tokens = 48;

    public static TheoryData<string> Prompts() => new("", "Once upon a time", "Lily and Tom went to the park");

    private GenerationRequest Request(string prompt, SteeringSpec steering, int maxTokens = Tokens) => new()
    {
        PromptIds = f.Engine.EncodePrompt(prompt),
        MaxTokens = maxTokens,
        Sampling = Greedy,
        Steering = steering,
    };

    private static FeatureVector Feature(int seed, float threshold = 0f)
    {
        var rng = new Random(seed);
        var v = Numerics.RandomVector(rng, 64);
        var norm = MathF.Sqrt(v.Sum(x => x * x));
        return new FeatureVector(v.Select(x => x / norm).ToArray(), Numerics.RandomVector(rng, 64, 0.5f), 0.1f, threshold);
    }

    /// <summary>An add at blocks.2.hook_resid_post and the shipped "happy" pack (terms at other sites).</summary>
    private SteeringSpec AddAndPack()
    {
        using var catalog = SteeringCatalog.Load(f.Folder);
        var pack = catalog.Packs.Get("happy", "pack");
        return new SteeringSpec(
        [
            new SteeringTerm(Site.Parse("blocks.2.hook_resid_post"), SteeringOperation.Add, 4f, Feature(1)),
            .. pack.At(1f, SteeringScope.All, "pack"),
        ]);
    }

    private async Task AssertSameGreedyTokens(GenerationRequest request)
    {
        var ours = await f.Engine.GenerateAsync(request).CollectAsync();
        var genAi = await f.Hooked.GenerateAsync(request).CollectAsync();
        Assert.Equal(ours.Ids, genAi.Ids);
        Assert.Equal(ours.Text, genAi.Text);
        Assert.Equal(ours.Last.Finish, genAi.Last.Finish);
        Assert.Equal(ours.Last.Usage, genAi.Last.Usage);
    }

    [Theory]
    [MemberData(nameof(Prompts))]
    public Task Unsteered_greedy_tokens_equal_our_engines(string prompt) =>
        AssertSameGreedyTokens(Request(prompt, SteeringSpec.None));

    [Theory]
    [MemberData(nameof(Prompts))]
    public async Task Greedy_tokens_with_an_add_and_a_pack_equal_our_engines_and_differ_from_unsteered(string prompt)
    {
        var steering = AddAndPack();
        await AssertSameGreedyTokens(Request(prompt, steering));
        var unsteered = await f.Hooked.GenerateAsync(Request(prompt, SteeringSpec.None)).CollectAsync();
        var steered = await f.Hooked.GenerateAsync(Request(prompt, steering)).CollectAsync();
        Assert.NotEqual(unsteered.Ids, steered.Ids);
    }

    [Fact]
    public Task Prompt_only_and_generated_only_terms_switch_when_the_prompt_has_run_as_in_our_engine() =>
        AssertSameGreedyTokens(Request("Once upon a time", new SteeringSpec(
        [
            new SteeringTerm(new Site(3, SiteKind.ResidPost), SteeringOperation.Add, 6f, Feature(4),
                SteeringScope.GeneratedOnly),
            new SteeringTerm(new Site(1, SiteKind.MlpOut), SteeringOperation.Rescale, -2f, Feature(2),
                SteeringScope.PromptOnly),
            new SteeringTerm(new Site(4, SiteKind.AttnOut), SteeringOperation.Clamp, 3f, Feature(3, 0.2f),
                SteeringScope.PromptOnly),
        ])));

    [Fact]
    public async Task Generated_only_steering_leaves_the_first_token_and_changes_the_rest()
    {
        var term = new SteeringTerm(new Site(3, SiteKind.ResidPost), SteeringOperation.Add, 6f, Feature(5),
            SteeringScope.GeneratedOnly);
        var unsteered = await f.Hooked.GenerateAsync(Request("Once upon a time", SteeringSpec.None)).CollectAsync();
        var steered = await f.Hooked.GenerateAsync(Request("Once upon a time", new SteeringSpec([term]))).CollectAsync();
        Assert.Equal(unsteered.Ids[0], steered.Ids[0]);
        Assert.NotEqual(unsteered.Ids, steered.Ids);
    }

    [Fact]
    public async Task Stop_string_ends_generation_before_it_as_in_our_engine()
    {
        var request = Request("", SteeringSpec.None, 100) with { Stop = ["Lily"] };
        await AssertSameGreedyTokens(request);
        var (_, text, last) = await f.Hooked.GenerateAsync(request).CollectAsync();
        Assert.Equal("Once upon a time, there was a little girl named ", text);
        Assert.Equal(FinishReason.Stop, last.Finish);
    }

    [Fact]
    public async Task Sampling_is_genais_own_and_repeats_with_the_same_seed()
    {
        GenerationRequest Sampled(ulong seed) => Request("", SteeringSpec.None) with
        {
            Sampling = new SamplingOptions { Temperature = 1f, TopP = 0.95f, Seed = seed },
        };
        var a = await f.Hooked.GenerateAsync(Sampled(42)).CollectAsync();
        var b = await f.Hooked.GenerateAsync(Sampled(42)).CollectAsync();
        var c = await f.Hooked.GenerateAsync(Sampled(43)).CollectAsync();
        Assert.Equal(a.Ids, b.Ids);
        Assert.NotEqual(a.Ids, c.Ids);
    }

    [Fact]
    public async Task Graph_without_steering_inputs_runs_unsteered_and_refuses_steering()
    {
        Assert.Null(f.Plain.SteeringShape);
        var c = RunCReference.Case("greedy_prompt_once_upon_a_time");
        var (ids, _, _) = await f.Plain.GenerateAsync(new GenerationRequest
            { PromptIds = c.PromptIds, MaxTokens = c.SampledIds.Length, Sampling = Greedy }).CollectAsync();
        Assert.Equal(c.SampledIds, ids);
        var e = await Assert.ThrowsAsync<FieldValidationException>(() =>
            f.Plain.GenerateAsync(Request("", AddAndPack())).CollectAsync());
        Assert.Equal("steering", e.Field);
    }

    [Fact]
    public async Task Concurrent_requests_each_get_their_own_generator_and_the_tokens_they_get_alone()
    {
        GenerationRequest[] requests =
        [
            Request("Once upon a time", SteeringSpec.None),
            Request("Lily and Tom went to the park", AddAndPack()),
            Request("The little dog", SteeringSpec.None, 30),
        ];
        var alone = new List<List<int>>();
        foreach (var request in requests) alone.Add((await f.Hooked.GenerateAsync(request).CollectAsync()).Ids);
        var together = await Task.WhenAll(requests.Select(r => Task.Run(() => f.Hooked.GenerateAsync(r).CollectAsync())));
        Assert.Equal(alone, together.Select(t => t.Ids));
    }

    [Fact]
    public void Steering_shape_comes_from_the_hooked_graph() =>
        Assert.Equal(f.Engine.SteeringShape, f.Hooked.SteeringShape);

    [Theory]
    [InlineData(0, "max_tokens")]
    [InlineData(600, "max_tokens")]
    public async Task Bad_requests_name_the_field(int maxTokens, string field)
    {
        var e = await Assert.ThrowsAsync<FieldValidationException>(() =>
            f.Hooked.GenerateAsync(Request("Once", SteeringSpec.None, maxTokens)).CollectAsync());
        Assert.Equal(field, e.Field);
    }
}

public class GenAiPackagingTests
{
    [Fact]
    public void GenAi_shares_the_gpu_build_of_onnx_runtime_so_no_cpu_build_replaced_it_in_the_bin_folder() =>
        // The CPU package's libonnxruntime.so has no CUDA provider; GenAI's package depends on it.
        Assert.Contains("CUDAExecutionProvider", Microsoft.ML.OnnxRuntime.OrtEnv.Instance().GetAvailableProviders());
}
