using System.Collections.Concurrent;
using System.Net;
using System.Net.Http.Json;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using System.Text.Json.Nodes;
using FeatureFlow.Api.V1;
using FeatureFlow.Engine;
using FeatureFlow.Models;
using FeatureFlow.Models.Folder;
using FeatureFlow.Server.Security;
using FeatureFlow.Steering.Packs;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Net.Client;
using Microsoft.Extensions.Logging;
using DomainTerm = FeatureFlow.Steering.SteeringTerm;
using DomainVector = FeatureFlow.Steering.FeatureVector;
using SiteKind = FeatureFlow.Models.SiteKind;

namespace FeatureFlow.Server.Tests;

/// <summary>Every log line of a server, whatever its category and level, as formatted text.</summary>
public sealed class CapturedLog : ILoggerProvider
{
    private readonly ConcurrentQueue<string> _lines = new();

    public string Text => string.Join("\n", _lines);

    public ILogger CreateLogger(string categoryName) => new Logger(this, categoryName);

    public void Dispose()
    {
    }

    private sealed class Logger(CapturedLog log, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception,
            Func<TState, Exception?, string> formatter) =>
            log._lines.Enqueue($"{logLevel} {category}: {formatter(state, exception)} {exception}");
    }
}

/// <summary>Helpers for calling a server with a key.</summary>
public static class Keyed
{
    public static Metadata Bearer(string key) => new() { { "authorization", $"Bearer {key}" } };

    public static HttpRequestMessage Post(string path, string json, string? key)
    {
        var request = new HttpRequestMessage(HttpMethod.Post, path)
        {
            Content = new StringContent(json, Encoding.UTF8, "application/json"),
        };
        if (key is not null) request.Headers.Authorization = new("Bearer", key);
        return request;
    }

    public static async Task<List<int>> TokensAsync(this Inference.InferenceClient client, GenerateRequest request,
        string? key)
    {
        using var call = client.Generate(request, key is null ? null : Bearer(key));
        var ids = new List<int>();
        await foreach (var r in call.ResponseStream.ReadAllAsync()) ids.AddRange(r.TokenIds);
        return ids;
    }
}

/// <summary>A server with a key file (a user and an admin key) on a model copy whose packs/ PutPack may change.</summary>
public sealed class KeyedServerFixture : IAsyncLifetime
{
    public const string UserKey = "user-key-0123456789abcdef";
    public const string AdminKey = "admin-key-fedcba9876543210";

    public string Folder { get; } = Directory.CreateTempSubdirectory("featureflow-security-").FullName;
    public CapturedLog Log { get; } = new();
    public ModelManifest Manifest { get; private set; } = null!;
    public ServerHost Host { get; private set; } = null!;
    public GrpcChannel Channel { get; private set; } = null!;
    public Inference.InferenceClient Client => new(Channel);
    public HttpClient Http { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        Manifest = ServerTestKit.CopyShippedModel(Folder);
        var keys = Path.Combine(Folder, "keys.txt");
        await File.WriteAllTextAsync(keys, $"# test keys\n\n{UserKey}\n  {ApiKeyStore.AdminPrefix}{AdminKey}  \n");
        Host = ServerHost.Create(new ServerOptions
        {
            ModelDirectory = Folder, Port = 0, HttpPort = 0, ApiKeysFile = keys,
            Engine = new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu },
        }, logging =>
        {
            // Everything, ASP.NET's own trace output included: no level may carry a key.
            logging.SetMinimumLevel(LogLevel.Trace);
            logging.AddFilter("Microsoft", LogLevel.Trace);
            logging.AddProvider(Log);
        });
        await Host.StartAsync();
        Channel = GrpcChannel.ForAddress(Host.Address);
        Http = new HttpClient { BaseAddress = new Uri(Host.HttpAddress!) };
    }

    public byte[] PackBytes(string name)
    {
        var vector = new DomainVector(Numerics.RandomVector(new Random(7), Manifest.Architecture.DModel));
        return new SteeringPack(new PackMetadata { Name = name, ModelFingerprint = SteeringPack.Fingerprint(Manifest) },
            [new DomainTerm(new Site(2, SiteKind.ResidPost), Steering.SteeringOperation.Add, 4f, vector)]).ToBytes();
    }

    public async Task DisposeAsync()
    {
        Http.Dispose();
        Channel.Dispose();
        await Host.DisposeAsync();
        Directory.Delete(Folder, recursive: true);
    }
}

public class SecurityTests(KeyedServerFixture f) : IClassFixture<KeyedServerFixture>
{
    private const string UserKey = KeyedServerFixture.UserKey, AdminKey = KeyedServerFixture.AdminKey;
    private static readonly Metadata User = Keyed.Bearer(UserKey), Admin = Keyed.Bearer(AdminKey);
    private const string WrongKey = "wrong-key-00000000000000";
    private static readonly GenerateRequest Short = new() { Prompt = "Once upon a time", MaxTokens = 8, Temperature = 0 };
    private const string Completion = """{"prompt":"Once upon a time","max_tokens":8,"temperature":0}""";

    [Fact]
    public async Task Grpc_without_a_key_or_with_a_wrong_key_is_unauthenticated_and_the_right_key_is_served()
    {
        var none = await Assert.ThrowsAsync<RpcException>(() => f.Client.TokensAsync(Short, key: null));
        Assert.Equal(StatusCode.Unauthenticated, none.StatusCode);
        Assert.Contains("missing API key", none.Status.Detail);
        var wrong = await Assert.ThrowsAsync<RpcException>(() => f.Client.TokensAsync(Short, WrongKey));
        Assert.Equal(StatusCode.Unauthenticated, wrong.StatusCode);
        Assert.Equal("invalid API key", wrong.Status.Detail);
        var unary = await Assert.ThrowsAsync<RpcException>(() => f.Client.GetModelInfoAsync(new()).ResponseAsync);
        Assert.Equal(StatusCode.Unauthenticated, unary.StatusCode);

        Assert.Equal(8, (await f.Client.TokensAsync(Short, UserKey)).Count);
        // An admin key is a user key too.
        Assert.Equal(8, (await f.Client.TokensAsync(Short, AdminKey)).Count);
        Assert.Equal("stories260k", (await f.Client.GetModelInfoAsync(new(), User)).Name);
    }

    [Theory]
    [InlineData(null)]
    [InlineData(WrongKey)]
    public async Task Http_without_the_right_key_is_401_with_an_openai_authentication_error(string? key)
    {
        HttpRequestMessage[] requests = [Keyed.Post("/v1/completions", Completion, key), new(HttpMethod.Get, "/v1/models")];
        foreach (var request in requests)
        {
            if (key is not null) request.Headers.Authorization = new("Bearer", key);
            using var response = await f.Http.SendAsync(request);
            Assert.Equal(HttpStatusCode.Unauthorized, response.StatusCode);
            Assert.Equal("Bearer", response.Headers.WwwAuthenticate.Single().Scheme);
            var error = (await response.Content.ReadFromJsonAsync<JsonObject>())!["error"]!;
            Assert.Equal("authentication_error", (string?)error["type"]);
            Assert.Equal("invalid_api_key", (string?)error["code"]);
        }
    }

    [Fact]
    public async Task Http_with_the_right_key_is_served()
    {
        using var response = await f.Http.SendAsync(Keyed.Post("/v1/completions", Completion, UserKey));
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var body = (await response.Content.ReadFromJsonAsync<JsonObject>())!;
        Assert.Equal(8, (int)body["usage"]!["completion_tokens"]!);
    }

    [Fact]
    public async Task Admin_rpcs_need_an_admin_key()
    {
        var put = new PutPackRequest { Name = "secured", Content = ByteString.CopyFrom(f.PackBytes("secured")) };
        var denied = await Assert.ThrowsAsync<RpcException>(() => f.Client.PutPackAsync(put, User).ResponseAsync);
        Assert.Equal(StatusCode.PermissionDenied, denied.StatusCode);
        Assert.Equal("PutPack needs an admin key", denied.Status.Detail);
        Assert.False(File.Exists(Path.Combine(f.Folder, "packs", "secured" + SteeringPack.Extension)));
        var delete = new DeletePackRequest { Name = "secured" };
        var deleteDenied = await Assert.ThrowsAsync<RpcException>(() =>
            f.Client.DeletePackAsync(delete, User).ResponseAsync);
        Assert.Equal(StatusCode.PermissionDenied, deleteDenied.StatusCode);
        var anonymous = await Assert.ThrowsAsync<RpcException>(() => f.Client.PutPackAsync(put).ResponseAsync);
        Assert.Equal(StatusCode.Unauthenticated, anonymous.StatusCode);

        var info = await f.Client.PutPackAsync(put, Admin);
        Assert.Equal("secured", info.Name);
        Assert.True(File.Exists(Path.Combine(f.Folder, "packs", "secured" + SteeringPack.Extension)));
        await f.Client.DeletePackAsync(delete, Admin);
        Assert.False(File.Exists(Path.Combine(f.Folder, "packs", "secured" + SteeringPack.Extension)));
    }

    [Fact]
    public async Task Health_readiness_and_metrics_stay_open()
    {
        var health = await new Health.HealthClient(f.Channel).CheckAsync(new HealthCheckRequest());
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, health.Status);
        foreach (var path in new[] { "/healthz", "/readyz", "/metrics" })
            Assert.Equal(HttpStatusCode.OK, (await f.Http.GetAsync(path)).StatusCode);
    }

    [Fact]
    public async Task Keys_never_reach_the_log()
    {
        foreach (var key in new[] { UserKey, AdminKey, WrongKey })
        {
            try
            {
                await f.Client.TokensAsync(Short, key);
            }
            catch (RpcException e) when (key == WrongKey && e.StatusCode == StatusCode.Unauthenticated)
            {
            }
            (await f.Http.SendAsync(Keyed.Post("/v1/completions", Completion, key))).Dispose();
        }
        await Assert.ThrowsAsync<RpcException>(() => f.Client.DeletePackAsync(new DeletePackRequest { Name = "absent" },
            User).ResponseAsync);
        await Assert.ThrowsAsync<RpcException>(() => f.Client.DeletePackAsync(new DeletePackRequest { Name = "absent" },
            Admin).ResponseAsync);

        var log = f.Log.Text;
        Assert.Contains("authentication: on, 2 API keys (1 admin)", log);
        // The denied user key is named by its id, which is all a log needs.
        Assert.Contains($"key:{ApiKeyStore.Id(UserKey)}", log);
        foreach (var key in new[] { UserKey, AdminKey, WrongKey })
            Assert.DoesNotContain(key, log);
    }
}

/// <summary>Key parsing and matching, without a server.</summary>
public class ApiKeyStoreTests
{
    [Fact]
    public void Find_hash_returns_the_matching_index_or_minus_one()
    {
        var hashes = new[] { "first-key-0123456789", "second-key-0123456789", "third-key-0123456789" }
            .Select(ApiKeyStore.Hash).ToArray();
        for (var i = 0; i < hashes.Length; i++) Assert.Equal(i, ApiKeyStore.FindHash(hashes[i], hashes));
        Assert.Equal(-1, ApiKeyStore.FindHash(ApiKeyStore.Hash("another-key-0123456789"), hashes));
        Assert.Equal(-1, ApiKeyStore.FindHash(ApiKeyStore.Hash("first-key-0123456789"), []));
        // A prefix or a hash of another length never matches.
        Assert.Equal(-1, ApiKeyStore.FindHash(hashes[0].AsSpan(0, 16), hashes));
    }

    [Fact]
    public void The_file_and_the_variables_combine_and_admin_keys_are_user_keys_too()
    {
        var file = Path.GetTempFileName();
        try
        {
            File.WriteAllText(file, "# comment\nfile-user-key-0123456789\nadmin:file-admin-key-0123456789\n\n");
            var env = new Dictionary<string, string?>
            {
                [ApiKeyStore.UserKeysVariable] = "env-user-key-0123456789, env-user2-key-0123456789",
                [ApiKeyStore.AdminKeysVariable] = "env-admin-key-0123456789",
            };
            var keys = ApiKeyStore.Load(file, name => env.GetValueOrDefault(name));
            Assert.Equal((5, 2), (keys.Count, keys.AdminCount));
            Assert.False(keys.Authenticate("Bearer env-user2-key-0123456789", "a").Caller!.IsAdmin);
            Assert.True(keys.Authenticate("Bearer file-user-key-0123456789", "a").Caller is { IsAdmin: false });
            Assert.True(keys.Authenticate("Bearer file-admin-key-0123456789", "a").Caller!.IsAdmin);
            Assert.True(keys.Authenticate("bearer env-admin-key-0123456789", "a").Caller!.IsAdmin);
            Assert.Null(keys.Authenticate("Bearer admin:file-admin-key-0123456789", "a").Caller);
            Assert.Null(keys.Authenticate("Basic file-user-key-0123456789", "a").Caller);
        }
        finally
        {
            File.Delete(file);
        }
    }

    [Fact]
    public void A_bad_key_is_refused_by_place_without_echoing_it()
    {
        var shortKey = Assert.Throws<InvalidDataException>(() =>
            ApiKeyStore.Load(null, name => name == ApiKeyStore.UserKeysVariable ? "ok-key-0123456789abc,short" : null));
        Assert.Equal($"{ApiKeyStore.UserKeysVariable} item 2: an API key must have at least 16 characters",
            shortKey.Message);
        var spaced = Assert.Throws<InvalidDataException>(() =>
            ApiKeyStore.Load(null, name => name == ApiKeyStore.AdminKeysVariable ? "has space in-0123456789" : null));
        Assert.DoesNotContain("0123456789", spaced.Message);
    }

    [Fact]
    public void Without_keys_every_caller_is_served_with_admin_scope_and_known_by_its_address()
    {
        var keys = ApiKeyStore.Load(null, _ => null);
        Assert.False(keys.Enabled);
        Assert.Equal(new Caller("addr:10.0.0.7", true), keys.Authenticate(null, "10.0.0.7").Caller);
    }
}

/// <summary>Start-up rules and transports, each on its own server.</summary>
public class SecurityStartupTests
{
    private static ServerOptions Options(string host = "127.0.0.1") => new()
    {
        ModelDirectory = RepoPaths.Stories260kModel, Host = host, Port = 0, HttpPort = 0,
        Engine = new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu },
    };

    [Fact]
    public async Task A_non_loopback_host_without_keys_fails_start_up_unless_insecure_no_auth_is_given()
    {
        var e = Assert.Throws<ArgumentException>(() => ServerHost.Create(Options("0.0.0.0")));
        Assert.Equal("host 0.0.0.0 is not a loopback address and no API keys are configured: give --api-keys-file or "
            + "FEATUREFLOW_API_KEYS, or --insecure-no-auth to serve it without authentication", e.Message);

        var log = new CapturedLog();
        var insecure = Options("0.0.0.0") with { InsecureNoAuth = true };
        await using var host = ServerHost.Create(insecure, l => l.AddProvider(log));
        await host.StartAsync();
        using var http = new HttpClient();
        var port = new Uri(host.HttpAddress!).Port;
        Assert.Equal("ok", await http.GetStringAsync($"http://127.0.0.1:{port}/healthz"));
        Assert.Contains("authentication: OFF on 0.0.0.0 (--insecure-no-auth)", log.Text);
    }

    [Fact]
    public async Task Tls_serves_grpc_and_http_to_a_client_that_trusts_the_certificate()
    {
        var folder = Directory.CreateTempSubdirectory("featureflow-tls-").FullName;
        try
        {
            using var ecdsa = ECDsa.Create(ECCurve.NamedCurves.nistP256);
            var request = new CertificateRequest("CN=featureflow-test", ecdsa, HashAlgorithmName.SHA256);
            var names = new SubjectAlternativeNameBuilder();
            names.AddIpAddress(IPAddress.Loopback);
            names.AddDnsName("localhost");
            request.CertificateExtensions.Add(names.Build());
            var now = DateTimeOffset.UtcNow;
            using var certificate = request.CreateSelfSigned(now.AddMinutes(-5), now.AddHours(1));
            var (certFile, keyFile) = (Path.Combine(folder, "cert.pem"), Path.Combine(folder, "key.pem"));
            await File.WriteAllTextAsync(certFile, certificate.ExportCertificatePem());
            await File.WriteAllTextAsync(keyFile, ecdsa.ExportPkcs8PrivateKeyPem());

            var options = Options() with { TlsCertificateFile = certFile, TlsKeyFile = keyFile };
            await using var host = ServerHost.Create(options);
            await host.StartAsync();
            Assert.StartsWith("https://", host.Address);
            Assert.StartsWith("https://", host.HttpAddress);
            // Trust exactly this certificate, as a client given the server's certificate would.
            SocketsHttpHandler Trusting() => new()
            {
                SslOptions =
                {
                    RemoteCertificateValidationCallback = (_, c, _, _) =>
                        c?.GetCertHashString() == certificate.GetCertHashString(),
                },
            };

            using var channel = GrpcChannel.ForAddress(host.Address, new GrpcChannelOptions { HttpHandler = Trusting() });
            var generate = new GenerateRequest { Prompt = "Once upon a time", MaxTokens = 5 };
            var tokens = await new Inference.InferenceClient(channel).TokensAsync(generate);
            Assert.Equal(5, tokens.Count);

            using var http = new HttpClient(Trusting()) { BaseAddress = new Uri(host.HttpAddress!) };
            foreach (var version in new[] { HttpVersion.Version11, HttpVersion.Version20 })
            {
                using var response = await http.SendAsync(new HttpRequestMessage(HttpMethod.Post, "/v1/completions")
                {
                    Content = new StringContent("""{"prompt":"Once","max_tokens":5}""", Encoding.UTF8,
                        "application/json"),
                    Version = version, VersionPolicy = HttpVersionPolicy.RequestVersionExact,
                });
                Assert.Equal(HttpStatusCode.OK, response.StatusCode);
                Assert.Equal(version, response.Version);
            }

            // A client that does not trust the certificate gets no answer.
            using var untrusting = new HttpClient { BaseAddress = new Uri(host.HttpAddress!) };
            await Assert.ThrowsAsync<HttpRequestException>(() => untrusting.GetAsync("/healthz"));
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public void Tls_needs_both_files()
    {
        var options = Options() with { TlsCertificateFile = "cert.pem" };
        var e = Assert.Throws<ArgumentException>(() => ServerHost.Create(options));
        Assert.Contains("--tls-key", e.Message);
    }
}

[CollectionDefinition(nameof(EnvironmentKeys), DisableParallelization = true)]
public sealed class EnvironmentKeys;

/// <summary>Keys from the environment: variables are process-wide, so this runs alone, after the parallel tests.</summary>
[Collection(nameof(EnvironmentKeys))]
public class EnvironmentKeyTests
{
    [Fact]
    public async Task Keys_from_the_environment_work_on_both_transports_with_their_scopes()
    {
        const string user = "env-user-key-0123456789", admin = "env-admin-key-0123456789";
        Environment.SetEnvironmentVariable(ApiKeyStore.UserKeysVariable, user);
        Environment.SetEnvironmentVariable(ApiKeyStore.AdminKeysVariable, admin);
        try
        {
            await using var host = ServerHost.Create(new ServerOptions
            {
                ModelDirectory = RepoPaths.Stories260kModel, Port = 0, HttpPort = 0,
                Engine = new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu },
            });
            await host.StartAsync();
            using var channel = GrpcChannel.ForAddress(host.Address);
            var client = new Inference.InferenceClient(channel);
            var request = new GenerateRequest { Prompt = "Once upon a time", MaxTokens = 4 };
            var anonymous = await Assert.ThrowsAsync<RpcException>(() => client.TokensAsync(request, null));
            Assert.Equal(StatusCode.Unauthenticated, anonymous.StatusCode);
            Assert.Equal(4, (await client.TokensAsync(request, user)).Count);
            var delete = new DeletePackRequest { Name = "absent" };
            var denied = await Assert.ThrowsAsync<RpcException>(() =>
                client.DeletePackAsync(delete, Keyed.Bearer(user)).ResponseAsync);
            Assert.Equal(StatusCode.PermissionDenied, denied.StatusCode);
            // Past the access check: the pack simply does not exist.
            var missing = await Assert.ThrowsAsync<RpcException>(() =>
                client.DeletePackAsync(delete, Keyed.Bearer(admin)).ResponseAsync);
            Assert.Equal(StatusCode.NotFound, missing.StatusCode);

            using var http = new HttpClient { BaseAddress = new Uri(host.HttpAddress!) };
            var body = """{"prompt":"Once upon a time","max_tokens":4}""";
            using var refused = await http.SendAsync(Keyed.Post("/v1/completions", body, null));
            Assert.Equal(HttpStatusCode.Unauthorized, refused.StatusCode);
            using var served = await http.SendAsync(Keyed.Post("/v1/completions", body, admin));
            Assert.Equal(HttpStatusCode.OK, served.StatusCode);
        }
        finally
        {
            Environment.SetEnvironmentVariable(ApiKeyStore.UserKeysVariable, null);
            Environment.SetEnvironmentVariable(ApiKeyStore.AdminKeysVariable, null);
        }
    }
}
