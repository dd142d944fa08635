using FeatureFlow.Models;
using FeatureFlow.Models.Formats;
using FeatureFlow.Steering;

namespace FeatureFlow.Engine.Tests;

public sealed class ActivationCollectorTests(EngineFixture f) : IClassFixture<EngineFixture>, IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("featureflow-corpus-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    private static readonly CollectOptions Small = new() { GeneratedSequences = 5, SequenceLength = 24, BatchRows = 2, Seed = 3 };

    [Fact]
    public void Batched_collection_records_what_a_single_sequence_run_reads_out()
    {
        var text = Path.Combine(_dir, "story.txt");
        File.WriteAllText(text, "Lily and Ben went to the beach. They found a big shell.");
        var manifest = ActivationCollector.Collect(f.Hooked, f.Engine.Tokenizer, "stories260k", Small with { TextFiles = [text] }, Path.Combine(_dir, "c"));
        var corpus = ActivationCorpus.Open(Path.Combine(_dir, "c"));
        Assert.Equal(5 * 24 + f.Engine.Tokenizer.Encode(File.ReadAllText(text), true).Length, manifest.TotalTokens);
        Assert.Equal([2, 2, 1, 1], corpus.Manifest.Chunks.Select(c => c.Rows));
        var tokens = corpus.ReadTokens();
        for (var row = 0; row < 5; row++) Assert.Equal(1, tokens[row * 24]); // every story starts at BOS

        // Row 3 of the generated stories, run alone through the same graph, reads out the same values.
        var site = new Site(3, SiteKind.MlpOut);
        var stored = corpus.ReadSite(site);
        using var state = f.Hooked.NewState();
        using var identity = f.Hooked.Bind(new SteeringTensors(f.Hooked.SteeringShape!));
        var alone = f.Hooked.Run(state, tokens.AsSpan(3 * 24, 24), identity, [site]).Sites[0];
        var batched = stored.AsSpan(3 * 24 * 64, 24 * 64);
        Assert.True(Numerics.RelativeL2(batched, alone) < 1e-5, $"relative L2 {Numerics.RelativeL2(batched, alone):E2}");
    }

    [Fact]
    public void Same_seed_same_corpus()
    {
        ActivationCollector.Collect(f.Hooked, f.Engine.Tokenizer, "m", Small, Path.Combine(_dir, "a"));
        ActivationCollector.Collect(f.Hooked, f.Engine.Tokenizer, "m", Small, Path.Combine(_dir, "b"));
        ActivationCollector.Collect(f.Hooked, f.Engine.Tokenizer, "m", Small with { Seed = 4 }, Path.Combine(_dir, "d"));
        var a = ActivationCorpus.Open(Path.Combine(_dir, "a")).ReadTokens();
        Assert.Equal(a, ActivationCorpus.Open(Path.Combine(_dir, "b")).ReadTokens());
        Assert.NotEqual(a, ActivationCorpus.Open(Path.Combine(_dir, "d")).ReadTokens());
    }

    [Fact]
    public void Float16_storage_halves_the_files_and_stays_close()
    {
        ActivationCollector.Collect(f.Hooked, f.Engine.Tokenizer, "m", Small, Path.Combine(_dir, "f32"));
        ActivationCollector.Collect(f.Hooked, f.Engine.Tokenizer, "m", Small with { Float16 = true }, Path.Combine(_dir, "f16"));
        var site = new Site(2, SiteKind.ResidPost);
        var full = ActivationCorpus.Open(Path.Combine(_dir, "f32")).ReadSite(site);
        var half = ActivationCorpus.Open(Path.Combine(_dir, "f16")).ReadSite(site);
        Assert.True(Numerics.RelativeL2(half, full) < 1e-3);
        var size = (string d) => new FileInfo(Path.Combine(_dir, d, site.HookName, "chunk_00000.safetensors")).Length;
        Assert.True(size("f16") < size("f32") * 0.6);
    }
}
