using FeatureFlow.Api.V1;
using FeatureFlow.Engine;
using FeatureFlow.Models;
using FeatureFlow.Models.Folder;
using FeatureFlow.Sae;
using FeatureFlow.Sae.Formats;
using FeatureFlow.Steering.Packs;
using Grpc.Core;
using Grpc.Net.Client;
using DomainOperation = FeatureFlow.Steering.SteeringOperation;
using DomainTerm = FeatureFlow.Steering.SteeringTerm;
using DomainVector = FeatureFlow.Steering.FeatureVector;
using SiteKind = FeatureFlow.Models.SiteKind;

namespace FeatureFlow.Server.Tests;

/// <summary>A copy of the shipped model folder with a test pack, a pack for another model, one SAE and one broken SAE folder; served on a free port.</summary>
public sealed class PackServerFixture : IAsyncLifetime
{
    public string Folder { get; } = Directory.CreateTempSubdirectory("featureflow-packserver-").FullName;
    public SteeringPack Pack { get; private set; } = null!;
    public SparseAutoencoder Sae { get; private set; } = null!;
    public ServerHost Host { get; private set; } = null!;
    public GrpcChannel Channel { get; private set; } = null!;
    public Inference.InferenceClient Client => new(Channel);

    public async Task InitializeAsync()
    {
        var manifest = ServerTestKit.CopyShippedModel(Folder);
        var rng = new Random(8);
        Pack = new SteeringPack(new PackMetadata { Name = "test-pack", ModelFingerprint = SteeringPack.Fingerprint(manifest), Seed = "blocks.2.hook_resid_post/0", DefaultStrength = 1.5f, Description = "a test" },
        [
            new DomainTerm(new Site(2, SiteKind.ResidPost), DomainOperation.Add, 2f, new DomainVector(Numerics.RandomVector(rng, 64))),
            new DomainTerm(new Site(3, SiteKind.MlpOut), DomainOperation.Add, -1f, new DomainVector(Numerics.RandomVector(rng, 64))),
            new DomainTerm(new Site(1, SiteKind.ResidPost), DomainOperation.Rescale, -2f, new DomainVector(Numerics.RandomVector(rng, 64), Numerics.RandomVector(rng, 64), 0.1f, 0.05f)),
        ]);
        Directory.CreateDirectory(Path.Combine(Folder, "packs"));
        Pack.Write(Path.Combine(Folder, "packs", "test-pack" + SteeringPack.Extension));
        new SteeringPack(Pack.Metadata with { Name = "foreign", ModelFingerprint = "gpt2:0:d768:L12" }, Pack.Terms)
            .Write(Path.Combine(Folder, "packs", "foreign" + SteeringPack.Extension));

        Sae = new SparseAutoencoder(64, 32, SaeActivation.JumpRelu, new Site(1, SiteKind.MlpOut)) { ModelName = "stories260k" };
        Numerics.RandomVector(rng, 32 * 64).CopyTo(Sae.Encoder, 0);
        Numerics.RandomVector(rng, 32 * 64).CopyTo(Sae.Decoder, 0);
        Numerics.RandomVector(rng, 64, 0.1f).CopyTo(Sae.DecoderBias, 0);
        Enumerable.Repeat(0.2f, 32).ToArray().CopyTo(Sae.Threshold, 0);
        SaeLensFormat.Write(Sae, Path.Combine(Folder, "saes", Sae.Site.HookName));
        // A broken SAE folder next to the good one: the server must refuse it and still serve the rest.
        Directory.CreateDirectory(Path.Combine(Folder, "saes", "blocks.2.hook_mlp_out"));
        File.WriteAllText(Path.Combine(Folder, "saes", "blocks.2.hook_mlp_out", SaeLensFormat.ConfigFile), "{ not json");

        Host = ServerHost.Create(new ServerOptions { ModelDirectory = Folder, Port = 0, Engine = new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu } });
        await Host.StartAsync();
        Channel = GrpcChannel.ForAddress(Host.Address);
    }

    public async Task DisposeAsync()
    {
        Channel.Dispose();
        await Host.DisposeAsync();
        Directory.Delete(Folder, true);
    }
}

public class PackServerTests(PackServerFixture f) : IClassFixture<PackServerFixture>
{
    private static Task<List<int>> Tokens(Inference.InferenceClient client, params Api.V1.SteeringTerm[] terms)
    {
        var request = new GenerateRequest { Prompt = "Once upon a time", MaxTokens = 32, Temperature = 0, Steering = new Api.V1.SteeringSpec() };
        request.Steering.Terms.AddRange(terms);
        return client.TokensAsync(request);
    }

    private static Api.V1.SteeringTerm Raw(DomainTerm t, float strength)
    {
        var term = new Api.V1.SteeringTerm
        {
            Hook = t.Site.HookName,
            Operation = t.Operation switch { DomainOperation.Add => Api.V1.SteeringOperation.Add, DomainOperation.Rescale => Api.V1.SteeringOperation.Rescale, _ => Api.V1.SteeringOperation.Clamp },
            Value = t.Operation switch { DomainOperation.Add => t.Value * strength, DomainOperation.Rescale => 1 + strength * (t.Value - 1), _ => t.Value },
            Strength = t.Operation == DomainOperation.Clamp ? strength : 1f,
            Vector = new Api.V1.FeatureVector { EncoderBias = t.Feature.EncoderBias, Threshold = t.Feature.Threshold },
        };
        term.Vector.Direction.AddRange(t.Feature.Decoder);
        if (t.Feature.Encoder is { } e) term.Vector.Encoder.AddRange(e);
        return term;
    }

    [Theory]
    [InlineData(null)]
    [InlineData(0.7f)]
    public async Task A_pack_by_name_steers_exactly_like_its_terms_sent_as_raw_vectors(float? strength)
    {
        var packRef = new PackRef { Name = "test-pack" };
        if (strength is { } s) packRef.Strength = s;
        var byName = await Tokens(f.Client, new Api.V1.SteeringTerm { Pack = packRef });
        var raw = await Tokens(f.Client, f.Pack.Terms.Select(t => Raw(t, strength ?? f.Pack.Metadata.DefaultStrength)).ToArray());
        var unsteered = await Tokens(f.Client);
        Assert.Equal(raw, byName);
        Assert.NotEqual(unsteered, byName);
    }

    [Fact]
    public async Task An_sae_feature_by_index_steers_exactly_like_its_vectors()
    {
        var (decoder, encoder, bias, threshold) = f.Sae.HookFeature(5);
        var byIndex = await Tokens(f.Client, new Api.V1.SteeringTerm { Hook = "blocks.1.hook_mlp_out", Operation = Api.V1.SteeringOperation.Clamp, Value = 6f, SaeFeature = new SaeFeatureRef { Index = 5 } });
        var raw = await Tokens(f.Client, Raw(new DomainTerm(new Site(1, SiteKind.MlpOut), DomainOperation.Clamp, 6f, new DomainVector(decoder, encoder, bias, threshold)), 1f));
        Assert.Equal(raw, byIndex);
        Assert.NotEqual(await Tokens(f.Client), byIndex);
    }

    [Fact]
    public async Task List_packs_shows_the_loaded_pack_and_the_refused_one()
    {
        var reply = await f.Client.ListPacksAsync(new ListPacksRequest());
        var pack = Assert.Single(reply.Packs);
        Assert.Equal(("test-pack", 3, 1.5f, f.Pack.Metadata.ContentSha256), (pack.Name, pack.Terms, pack.DefaultStrength, pack.ContentSha256));
        Assert.Contains("blocks.3.hook_mlp_out", pack.Sites);
        var refused = Assert.Single(reply.Refused);
        Assert.Contains("foreign", refused.Path);
        Assert.Contains("built for model 'gpt2", refused.Reason);
    }

    public static TheoryData<string, string, StatusCode> BadReferences() => new()
    {
        { "unknown pack", "steering.terms[0].pack.name", StatusCode.NotFound },
        { "path-like pack name", "steering.terms[0].pack.name", StatusCode.InvalidArgument },
        { "pack with a site", "steering.terms[0].pack", StatusCode.InvalidArgument },
        { "sae feature out of range", "steering.terms[0].sae_feature.index", StatusCode.InvalidArgument },
        { "sae feature at a site without an SAE", "steering.terms[0].sae_feature", StatusCode.InvalidArgument },
        { "pack strength NaN", "steering.terms[0].pack.strength", StatusCode.InvalidArgument },
    };

    [Theory]
    [MemberData(nameof(BadReferences))]
    public async Task Bad_references_get_a_status_naming_the_field(string name, string field, StatusCode code)
    {
        var term = name switch
        {
            "unknown pack" => new Api.V1.SteeringTerm { Pack = new PackRef { Name = "nope" } },
            "path-like pack name" => new Api.V1.SteeringTerm { Pack = new PackRef { Name = "../packs/test-pack" } },
            "pack with a site" => new Api.V1.SteeringTerm { Hook = "blocks.1.hook_mlp_out", Pack = new PackRef { Name = "test-pack" } },
            "sae feature out of range" => new Api.V1.SteeringTerm { Hook = "blocks.1.hook_mlp_out", Operation = Api.V1.SteeringOperation.Rescale, SaeFeature = new SaeFeatureRef { Index = 32 } },
            "sae feature at a site without an SAE" => new Api.V1.SteeringTerm { Hook = "blocks.0.hook_mlp_out", Operation = Api.V1.SteeringOperation.Rescale, SaeFeature = new SaeFeatureRef { Index = 1 } },
            _ => new Api.V1.SteeringTerm { Pack = new PackRef { Name = "test-pack", Strength = float.NaN } },
        };
        var e = await Assert.ThrowsAsync<RpcException>(() => Tokens(f.Client, term));
        Assert.Equal(code, e.StatusCode);
        Assert.StartsWith(field + ":", e.Status.Detail);
    }
}
