using FeatureFlow.Engine;
using FeatureFlow.Models;
using FeatureFlow.Models.Folder;
using FeatureFlow.Steering;
using FeatureFlow.Steering.Packs;

namespace FeatureFlow.LlamaCpp.Tests;

/// <summary>The shipped model twice: our engine on models/stories260k, llama.cpp on the same weights as GGUF.</summary>
public sealed class InteropFixture : IDisposable
{
    public ModelFolder Folder { get; } = ModelFolder.Open(RepoPaths.Stories260kModel);
    public GenerationEngine Engine { get; }
    public LlamaCppPeer LlamaCpp { get; } = new(Path.Combine(RepoPaths.Stories260kFixtures, "stories260K.gguf"));

    public InteropFixture() =>
        Engine = new GenerationEngine(Folder,
            new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu });

    public void Dispose()
    {
        Engine.Dispose();
        LlamaCpp.Dispose();
    }
}

/// <summary>
/// Control vectors proven against llama.cpp itself: a pack exported with <see cref="ControlVectorGguf"/>, read by
/// llama.cpp's GGUF reader and applied with <c>llama_set_adapter_cvec</c>, must give the same greedy tokens as our
/// engine steered by the pack; and a control vector made by llama.cpp's GGUF writer must import to the blocks
/// llama.cpp steers with it.
/// </summary>
public sealed class ControlVectorInteropTests(InteropFixture fixture) : IClassFixture<InteropFixture>, IDisposable
{
    private const int Tokens = 48;
    private const float Strength = 2f;
    private readonly string _dir = Directory.CreateTempSubdirectory("featureflow-llamacpp-").FullName;
    private readonly GenerationEngine _engine = fixture.Engine;
    private readonly LlamaCppPeer _llama = fixture.LlamaCpp;
    private int[] Prompt => _engine.EncodePrompt("Once upon a time");

    public void Dispose() => Directory.Delete(_dir, true);

    [Fact]
    public async Task Unsteered_llama_cpp_and_the_engine_give_the_same_greedy_tokens_from_our_prompt_ids()
    {
        // Both get BOS + our ids verbatim; llama.cpp's BOS must be ours, and its tokenizer would add it too.
        Assert.Equal(_engine.Tokenizer.BosId, _llama.Bos);
        Assert.Equal(_engine.Tokenizer.EosId, _llama.Eos);
        Assert.True(_llama.AddsBos);
        Assert.Equal(_engine.Tokenizer.BosId, Prompt[0]);
        Assert.Equal((_engine.Architecture.Layers, _engine.Architecture.DModel), (_llama.Layers, _llama.EmbeddingSize));
        var ours = await EngineGreedy([]);
        Assert.Equal(ours, _llama.Greedy(Prompt, Tokens));
        Assert.Equal(Tokens, ours.Count);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public async Task An_exported_term_at_block_k_steers_llama_cpp_exactly_as_the_engine(int block)
    {
        var pack = RandomPack($"b{block}", [block]);
        var (withVector, ours) = await BothSteered(pack);
        Assert.Equal(ours, withVector);
        Assert.NotEqual(await EngineGreedy([]), ours);
    }

    [Fact]
    public async Task An_exported_pack_over_blocks_1_to_4_steers_llama_cpp_exactly_as_the_engine()
    {
        var pack = RandomPack("all", [1, 2, 3, 4]);
        var (withVector, ours) = await BothSteered(pack);
        Assert.Equal(ours, withVector);
        Assert.NotEqual(await EngineGreedy([]), ours);
        Assert.Equal(await EngineGreedy([]), _llama.Greedy(Prompt, Tokens));
    }

    [Fact]
    public async Task A_term_at_block_0_is_reported_and_the_rest_still_matches_llama_cpp()
    {
        var pack = RandomPack("zero", [0, 2]);
        var path = Path.Combine(_dir, "zero.gguf");
        var skipped = ControlVectorGguf.Write(pack, Strength, _engine.Architecture.Layers, "llama", path);
        var s = Assert.Single(skipped);
        Assert.Equal(new Site(0, SiteKind.ResidPost), s.Term.Site);
        Assert.Contains("never steers block 0", s.Reason);
        var expressible = new SteeringPack(pack.Metadata, [pack.Terms[1]]);
        Assert.Equal(await EngineGreedy(expressible.At(Strength, SteeringScope.All, "steering.terms[0]").ToArray()),
            _llama.Greedy(Prompt, Tokens, Ggml.ReadControlVector(path, _llama.EmbeddingSize)));
    }

    [Fact]
    public void Export_then_import_gives_the_same_terms_at_the_same_blocks()
    {
        var pack = RandomPack("rt", [1, 2, 3, 4]);
        var path = Path.Combine(_dir, "rt.gguf");
        Assert.Empty(ControlVectorGguf.Write(pack, Strength, _engine.Architecture.Layers, "llama", path));
        var back = ControlVectorGguf.Read(path, _engine.Architecture.DModel, _engine.Architecture.Layers);
        Assert.Empty(back.Ignored);
        Assert.Equal(pack.Terms.Select(t => t.Site), back.Terms.Select(t => t.Site));
        Assert.Equal(pack.Terms.Select(t => t.Feature.Decoder.Select(x => Strength * t.Value * x)),
            back.Terms.Select(t => t.Feature.Decoder));
    }

    [Fact]
    public async Task A_llama_cpp_made_direction_2_imports_as_block_2_and_steers_as_llama_cpp_does()
    {
        var v = RandomPack("d2", [2]).Terms[0];
        var direction = v.Feature.Decoder.Select(x => Strength * v.Value * x).ToArray();
        var path = Path.Combine(_dir, "d2.gguf");
        Ggml.WriteControlVector(path, new Dictionary<int, float[]> { [2] = direction });
        var imported = ControlVectorGguf.Read(path, _engine.Architecture.DModel, _engine.Architecture.Layers);
        var term = Assert.Single(imported.Terms);
        Assert.Equal("blocks.2.hook_resid_post", term.Site.HookName);
        Assert.Equal((SteeringOperation.Add, 1f), (term.Operation, term.Value));
        Assert.Equal(direction, term.Feature.Decoder);
        var llama = _llama.Greedy(Prompt, Tokens, Ggml.ReadControlVector(path, _llama.EmbeddingSize));
        Assert.Equal(await EngineGreedy(imported.Terms), llama);
        Assert.NotEqual(await EngineGreedy([]), llama);
    }

    [Fact]
    public void A_llama_cpp_made_direction_0_is_reported_as_never_applied()
    {
        var path = Path.Combine(_dir, "d0.gguf");
        var v = RandomPack("d0", [3]).Terms[0].Feature.Decoder;
        Ggml.WriteControlVector(path, new Dictionary<int, float[]> { [0] = v, [3] = v });
        Assert.Throws<InvalidDataException>(() => Ggml.ReadControlVector(path, _llama.EmbeddingSize)); // llama.cpp too
        var imported = ControlVectorGguf.Read(path, _engine.Architecture.DModel, _engine.Architecture.Layers);
        Assert.Equal([new Site(3, SiteKind.ResidPost)], imported.Terms.Select(t => t.Site));
        Assert.StartsWith("direction.0: llama.cpp never applies it", Assert.Single(imported.Ignored));
    }

    /// <summary>
    /// Random directions (entries uniform in ±1, fixed seed), one additive resid_post term per block. At coefficient
    /// 0.25 × <see cref="Strength"/> each block changes the greedy text within 48 tokens yet keeps it running: twice
    /// that turns it into repeated letters, and blocks 1..4 together then end at EOS after 5 tokens.
    /// </summary>
    private SteeringPack RandomPack(string name, int[] blocks)
    {
        var rng = new Random(7);
        var metadata = new PackMetadata
        {
            Name = name,
            ModelFingerprint = SteeringPack.Fingerprint(fixture.Folder.Manifest),
        };
        return new SteeringPack(metadata, blocks.Select(b =>
            new SteeringTerm(new Site(b, SiteKind.ResidPost), SteeringOperation.Add, 0.25f,
                new FeatureVector(Numerics.RandomVector(rng, _engine.Architecture.DModel)))).ToArray());
    }

    /// <summary>llama.cpp with the pack exported at <see cref="Strength"/>; the engine with it at that strength.</summary>
    private async Task<(List<int> LlamaCpp, List<int> Engine)> BothSteered(SteeringPack pack)
    {
        var path = Path.Combine(_dir, pack.Name + ".gguf");
        Assert.Empty(ControlVectorGguf.Write(pack, Strength, _engine.Architecture.Layers, "llama", path));
        var llama = _llama.Greedy(Prompt, Tokens, Ggml.ReadControlVector(path, _llama.EmbeddingSize));
        return (llama, await EngineGreedy(pack.At(Strength, SteeringScope.All, "steering.terms[0]").ToArray()));
    }

    private async Task<List<int>> EngineGreedy(IReadOnlyList<SteeringTerm> terms)
    {
        var request = new GenerationRequest
        {
            PromptIds = Prompt,
            MaxTokens = Tokens,
            Sampling = new SamplingOptions { Temperature = 0f },
            Steering = new SteeringSpec(terms),
        };
        var ids = new List<int>();
        await foreach (var update in _engine.GenerateAsync(request)) ids.AddRange(update.TokenIds);
        return ids;
    }
}
