using FeatureFlow.Models;
using FeatureFlow.Models.Folder;
using FeatureFlow.Steering.Packs;

namespace FeatureFlow.Steering.Tests;

public sealed class PackTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("featureflow-packs-").FullName;
    private static readonly ModelManifest Manifest = ModelFolder.Open(RepoPaths.Stories260kModel).Manifest;

    public void Dispose() => Directory.Delete(_dir, true);

    internal static SteeringPack SamplePack(string name, ModelManifest manifest, string? fingerprint = null)
    {
        var rng = new Random(4);
        var v = Numerics.RandomVector(rng, 64);
        var e = Numerics.RandomVector(rng, 64);
        return new SteeringPack(new PackMetadata { Name = name, ModelFingerprint = fingerprint ?? SteeringPack.Fingerprint(manifest), Seed = "blocks.2.hook_resid_post/3", DefaultStrength = 1.5f },
        [
            new SteeringTerm(new Site(2, SiteKind.ResidPost), SteeringOperation.Add, 3f, new FeatureVector(v)),
            new SteeringTerm(new Site(3, SiteKind.ResidPost), SteeringOperation.Add, 2f, new FeatureVector(e)),
            new SteeringTerm(new Site(1, SiteKind.MlpOut), SteeringOperation.Rescale, -2f, new FeatureVector(v, e, 0.3f, 0.1f)),
            new SteeringTerm(new Site(4, SiteKind.AttnOut), SteeringOperation.Clamp, 5f, new FeatureVector(e, v, -0.2f, 0f)),
        ]);
    }

    [Fact]
    public void A_pack_reads_back_with_the_same_terms_and_hash()
    {
        var pack = SamplePack("p", Manifest);
        var path = Path.Combine(_dir, "p" + SteeringPack.Extension);
        pack.Write(path);
        var back = SteeringPack.Read(path, Manifest);
        Assert.Equal(pack.Metadata.ContentSha256, back.Metadata.ContentSha256);
        Assert.Equal(64, pack.Metadata.ContentSha256.Length);
        Assert.Equal(pack.Terms.Select(t => (t.Site, t.Operation, t.Value)), back.Terms.Select(t => (t.Site, t.Operation, t.Value)));
        Assert.Equal(pack.Terms[2].Feature.Encoder, back.Terms[2].Feature.Encoder);
        Assert.Null(back.Terms[0].Feature.Encoder);
        var compiler = new SteeringCompiler(new SteeringShape(5, 64, 8));
        Assert.Equal(compiler.Compile(new SteeringSpec(pack.Terms)).Prompt.Decoder, compiler.Compile(new SteeringSpec(back.Terms)).Prompt.Decoder);
    }

    [Fact]
    public void A_pack_at_a_strength_keeps_its_coefficients_and_carries_the_strength()
    {
        var pack = SamplePack("p", Manifest);
        var terms = pack.At(0.5f, SteeringScope.GeneratedOnly, "steering.terms[0]").ToArray();
        Assert.Equal(pack.Terms.Select(t => t.Value), terms.Select(t => t.Value));
        Assert.All(terms, t => Assert.Equal(0.5f, t.Strength));
        Assert.All(terms, t => Assert.Equal(SteeringScope.GeneratedOnly, t.Scope));
        Assert.All(terms, t => Assert.StartsWith("steering.terms[0]", t.Field));
    }

    [Fact]
    public void A_pack_for_another_model_is_refused_and_named()
    {
        var path = Path.Combine(_dir, "other" + SteeringPack.Extension);
        SamplePack("other", Manifest, fingerprint: "gpt2:abc:d768:L12").Write(path);
        var e = Assert.Throws<InvalidDataException>(() => SteeringPack.Read(path, Manifest));
        Assert.Contains(path, e.Message);
        Assert.Contains("gpt2:abc", e.Message);
    }

    [Fact]
    public void An_altered_pack_fails_its_content_hash()
    {
        var path = Path.Combine(_dir, "p" + SteeringPack.Extension);
        SamplePack("p", Manifest).Write(path);
        var bytes = File.ReadAllBytes(path);
        bytes[^1] ^= 0x40; // flip a bit of the last threshold
        File.WriteAllBytes(path, bytes);
        var e = Assert.Throws<InvalidDataException>(() => SteeringPack.Read(path, Manifest));
        Assert.Contains("content hash", e.Message);
    }

    [Fact]
    public void The_registry_refuses_bad_packs_and_keeps_the_others()
    {
        SamplePack("good", Manifest).Write(Path.Combine(_dir, "good" + SteeringPack.Extension));
        SamplePack("foreign", Manifest, fingerprint: "x").Write(Path.Combine(_dir, "foreign" + SteeringPack.Extension));
        File.WriteAllText(Path.Combine(_dir, "garbage" + SteeringPack.Extension), "not a pack");
        var registry = PackRegistry.Load(_dir, Manifest);
        Assert.Equal(["good"], registry.Packs.Select(p => p.Name));
        Assert.Equal(2, registry.Errors.Count);
        Assert.Contains(registry.Errors, e => e.Path.EndsWith("garbage" + SteeringPack.Extension, StringComparison.Ordinal));
        var missing = Assert.Throws<PackNotFoundException>(() => registry.Get("nope", "steering.terms[0].pack.name"));
        Assert.Equal("steering.terms[0].pack.name", missing.Field);
        Assert.Contains("good", missing.Message);
    }

    [Fact]
    public void Control_vector_direction_N_is_block_N_output_and_round_trips_to_the_same_blocks()
    {
        var pack = SamplePack("p", Manifest);
        var path = Path.Combine(_dir, "p.gguf");
        var skipped = ControlVectorGguf.Write(pack, 2f, 5, "llama", path);
        Assert.Equal([pack.Terms[2], pack.Terms[3]], skipped.Select(s => s.Term)); // the rescale and clamp terms
        Assert.All(skipped, s => Assert.Contains("activation", s.Reason));
        var text = System.Text.Encoding.ASCII.GetString(File.ReadAllBytes(path));
        Assert.StartsWith("GGUF", text);
        // llama.cpp adds direction.N to block N's output, so blocks.N.hook_resid_post is written as direction.N.
        Assert.Contains("direction.2", text);
        Assert.Contains("direction.3", text);
        Assert.DoesNotContain("direction.4", text);
        var contents = ControlVectorGguf.Read(path, 64, 5);
        Assert.Empty(contents.Ignored);
        Assert.Equal([new Site(2, SiteKind.ResidPost), new Site(3, SiteKind.ResidPost)],
            contents.Terms.Select(t => t.Site));
        Assert.All(contents.Terms, t => Assert.Equal(SteeringOperation.Add, t.Operation));
        Assert.Equal(pack.Terms[0].Feature.Decoder.Select(x => x * 3f * 2f), contents.Terms[0].Feature.Decoder);
        Assert.Throws<InvalidDataException>(() => ControlVectorGguf.Read(path, 32, 5));
    }

    [Fact]
    public void Control_vector_export_reports_each_term_llama_cpp_cannot_express()
    {
        var v = Numerics.RandomVector(new Random(5), 64);
        var metadata = new PackMetadata { Name = "q", ModelFingerprint = SteeringPack.Fingerprint(Manifest) };
        var pack = new SteeringPack(metadata,
        [
            new SteeringTerm(new Site(0, SiteKind.ResidPost), SteeringOperation.Add, 1f, new FeatureVector(v)),
            new SteeringTerm(new Site(2, SiteKind.MlpOut), SteeringOperation.Add, 1f, new FeatureVector(v)),
            new SteeringTerm(new Site(4, SiteKind.ResidPost), SteeringOperation.Add, 1f, new FeatureVector(v)),
        ]);
        var skipped = ControlVectorGguf.Unexpressible(pack);
        Assert.Equal([pack.Terms[0], pack.Terms[1]], skipped.Select(s => s.Term));
        Assert.Contains("never steers block 0", skipped[0].ToString());
        Assert.StartsWith("add at blocks.0.hook_resid_post", skipped[0].ToString());
        Assert.Contains("resid_post", skipped[1].Reason);
        var path = Path.Combine(_dir, "q.gguf");
        Assert.Equal(skipped, ControlVectorGguf.Write(pack, 1f, 5, "llama", path));
        Assert.Equal([new Site(4, SiteKind.ResidPost)], ControlVectorGguf.Read(path, 64, 5).Terms.Select(t => t.Site));

        var onlyBlock0 = new SteeringPack(pack.Metadata, [pack.Terms[0]]);
        var e = Assert.Throws<InvalidDataException>(() => ControlVectorGguf.Write(onlyBlock0, 1f, 5, "llama", path));
        Assert.Contains("never steers block 0", e.Message);
    }
}
