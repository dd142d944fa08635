using FeatureFlow.Api.V1;
using FeatureFlow.Engine;
using FeatureFlow.Models;
using FeatureFlow.Models.Folder;
using FeatureFlow.Steering.Packs;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using DomainTerm = FeatureFlow.Steering.SteeringTerm;
using DomainVector = FeatureFlow.Steering.FeatureVector;
using SiteKind = FeatureFlow.Models.SiteKind;

namespace FeatureFlow.Server.Tests;

/// <summary>A copy of the shipped model folder whose packs/ the tests change while the server runs.</summary>
public sealed class ReloadFixture : IAsyncLifetime
{
    public string Folder { get; } = Directory.CreateTempSubdirectory("featureflow-reload-").FullName;
    public string Packs => Path.Combine(Folder, "packs");
    public ModelManifest Manifest { get; private set; } = null!;
    public ServerHost Host { get; private set; } = null!;
    public GrpcChannel Channel { get; private set; } = null!;
    public Inference.InferenceClient Client => new(Channel);

    public async Task InitializeAsync()
    {
        Manifest = ServerTestKit.CopyShippedModel(Folder);
        Directory.CreateDirectory(Packs);
        Host = ServerHost.Create(new ServerOptions { ModelDirectory = Folder, Port = 0, Engine = new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu } });
        await Host.StartAsync();
        Channel = GrpcChannel.ForAddress(Host.Address);
    }

    public SteeringPack Pack(string name, int seed)
    {
        var rng = new Random(seed);
        return new SteeringPack(new PackMetadata { Name = name, ModelFingerprint = SteeringPack.Fingerprint(Manifest) },
            [new DomainTerm(new Site(2, SiteKind.ResidPost), Steering.SteeringOperation.Add, 6f, new DomainVector(Numerics.RandomVector(rng, 64)))]);
    }

    public async Task DisposeAsync()
    {
        Channel.Dispose();
        await Host.DisposeAsync();
        Directory.Delete(Folder, recursive: true);
    }
}

/// <summary>Pack versions, hot reload and the admin RPCs, against a running server.</summary>
public class PackReloadServerTests(ReloadFixture f) : IClassFixture<ReloadFixture>
{
    private static GenerateRequest Request(string pack, int tokens = 40)
    {
        var r = new GenerateRequest { MaxTokens = tokens, Temperature = 0, Steering = new Api.V1.SteeringSpec() };
        r.Steering.Terms.Add(new Api.V1.SteeringTerm { Pack = new PackRef { Name = pack } });
        return r;
    }

    private Task<List<int>> Tokens(GenerateRequest request) => f.Client.TokensAsync(request);

    /// <summary>Waits (bounded) until the server's current version of <paramref name="name"/> is <paramref name="hash"/>, or gone.</summary>
    private async Task WaitFor(string name, string? hash)
    {
        for (var i = 0; i < 400; i++)
        {
            try
            {
                if ((await f.Client.GetPackAsync(new GetPackRequest { Name = name })).ContentSha256 == hash) return;
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.NotFound)
            {
                if (hash is null) return;
            }
            await Task.Delay(25);
        }
        Assert.Fail($"the server did not pick up {name} → {hash ?? "deleted"}");
    }

    private void WriteFile(SteeringPack pack) => File.WriteAllBytes(Path.Combine(f.Packs, pack.Name + SteeringPack.Extension), pack.ToBytes());

    [Fact]
    public async Task Replacing_a_file_changes_new_requests_not_a_stream_in_flight_and_a_corrupt_replacement_keeps_the_old_version()
    {
        var v1 = f.Pack("swap", 1);
        var v2 = f.Pack("swap", 2);
        WriteFile(v1);
        await WaitFor("swap", v1.Metadata.ContentSha256);
        var expected1 = await Tokens(Request("swap", 120));

        // A stream that started with v1 keeps v1 while the file is replaced under it.
        var paced = new SemaphoreSlim(0);
        void Pace(long id, int count) { if (count == 5) paced.Release(); Thread.Sleep(1); }
        f.Host.Engine.TokenGenerated += Pace;
        List<int> inFlight;
        try
        {
            var running = Tokens(Request("swap", 120));
            Assert.True(await paced.WaitAsync(TimeSpan.FromSeconds(10)));
            WriteFile(v2);
            await WaitFor("swap", v2.Metadata.ContentSha256);
            inFlight = await running;
        }
        finally
        {
            f.Host.Engine.TokenGenerated -= Pace;
        }
        Assert.Equal(expected1, inFlight);
        var expected2 = await Tokens(Request("swap", 120));
        Assert.NotEqual(expected1, expected2);

        // A corrupt replacement is refused with its reason; v2 keeps serving.
        File.WriteAllBytes(Path.Combine(f.Packs, "swap" + SteeringPack.Extension), [1, 2, 3, 4, 5]);
        ListPacksResponse list = null!;
        for (var i = 0; i < 400 && (list = await f.Client.ListPacksAsync(new ListPacksRequest())).Refused.All(r => !r.Path.EndsWith("swap" + SteeringPack.Extension)); i++)
            await Task.Delay(25);
        Assert.Contains(list.Refused, r => r.Path.EndsWith("swap" + SteeringPack.Extension) && r.Reason.Length > 0);
        Assert.Equal(v2.Metadata.ContentSha256, list.Packs.Single(p => p.Name == "swap").ContentSha256);
        Assert.Equal(expected2, await Tokens(Request("swap", 120)));

        // A pinned version still resolves: name@hash-prefix.
        Assert.Equal(expected1, await Tokens(Request("swap@" + v1.Metadata.ContentSha256[..8], 120)));

        // Deleting the file: new requests naming the pack get NOT_FOUND.
        File.Delete(Path.Combine(f.Packs, "swap" + SteeringPack.Extension));
        await WaitFor("swap", null);
        var e = await Assert.ThrowsAsync<RpcException>(() => Tokens(Request("swap")));
        Assert.Equal(StatusCode.NotFound, e.StatusCode);
        Assert.StartsWith("steering.terms[0].pack.name:", e.Status.Detail);
    }

    [Fact]
    public async Task Put_and_delete_validate_like_files_and_take_effect_at_once()
    {
        var pack = f.Pack("uploaded", 3);
        var info = await f.Client.PutPackAsync(new PutPackRequest { Name = "uploaded", Content = ByteString.CopyFrom(pack.ToBytes()) });
        Assert.Equal(pack.Metadata.ContentSha256, info.ContentSha256);
        Assert.Equal([pack.Metadata.ContentSha256], info.Versions);
        Assert.True(File.Exists(Path.Combine(f.Packs, "uploaded" + SteeringPack.Extension)));
        var steered = await Tokens(Request("uploaded"));
        Assert.NotEqual(await Tokens(new GenerateRequest { MaxTokens = 40, Temperature = 0 }), steered);

        async Task<RpcException> Refused(Func<Task> call) => await Assert.ThrowsAsync<RpcException>(call);
        var mismatch = await Refused(() => f.Client.PutPackAsync(new PutPackRequest { Name = "other-name", Content = ByteString.CopyFrom(pack.ToBytes()) }).ResponseAsync);
        Assert.Equal(StatusCode.InvalidArgument, mismatch.StatusCode);
        var corrupt = await Refused(() => f.Client.PutPackAsync(new PutPackRequest { Name = "uploaded", Content = ByteString.CopyFrom(1, 2, 3) }).ResponseAsync);
        Assert.Equal(StatusCode.InvalidArgument, corrupt.StatusCode);
        var pathLike = await Refused(() => f.Client.PutPackAsync(new PutPackRequest { Name = "../evil", Content = ByteString.CopyFrom(pack.ToBytes()) }).ResponseAsync);
        Assert.Equal(StatusCode.InvalidArgument, pathLike.StatusCode);
        Assert.False(File.Exists(Path.Combine(f.Folder, "evil" + SteeringPack.Extension)));
        Assert.Equal(steered, await Tokens(Request("uploaded"))); // refused uploads changed nothing

        await f.Client.DeletePackAsync(new DeletePackRequest { Name = "uploaded" });
        var gone = await Refused(() => Tokens(Request("uploaded")));
        Assert.Equal(StatusCode.NotFound, gone.StatusCode);
        var again = await Refused(() => f.Client.DeletePackAsync(new DeletePackRequest { Name = "uploaded" }).ResponseAsync);
        Assert.Equal(StatusCode.NotFound, again.StatusCode);
    }
}
