using System.Globalization;
using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json.Nodes;
using FeatureFlow.Api.V1;
using FeatureFlow.Engine;
using FeatureFlow.Server.Security;
using Grpc.Core;
using Grpc.Net.Client;

namespace FeatureFlow.Server.Tests;

/// <summary>A clock that moves only when told to, for token buckets.</summary>
public sealed class ManualClock : TimeProvider
{
    private long _ticks;

    public override long TimestampFrequency => TimeSpan.TicksPerSecond;
    public override long GetTimestamp() => Interlocked.Read(ref _ticks);
    public void Advance(TimeSpan by) => Interlocked.Add(ref _ticks, by.Ticks);
}

/// <summary>A keyed server with small size limits on both transports.</summary>
public sealed class LimitsFixture : IAsyncLifetime
{
    public const string Key = "limits-key-0123456789abcdef";
    public static readonly ServerLimits Limits = new()
    {
        MaxPromptTokens = 32, MaxTokensLimit = 48, MaxTerms = 2, MaxReadoutFeatures = 3,
        MaxRequestBodyBytes = 64 * 1024, MaxGrpcMessageBytes = 64 * 1024,
    };

    private readonly string _keys = Path.GetTempFileName();
    public ServerHost Host { get; private set; } = null!;
    public GrpcChannel Channel { get; private set; } = null!;
    public Inference.InferenceClient Client => new(Channel);
    public HttpClient Http { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        await File.WriteAllTextAsync(_keys, Key);
        Host = ServerHost.Create(new ServerOptions
        {
            ModelDirectory = RepoPaths.Stories260kModel, Port = 0, HttpPort = 0, ApiKeysFile = _keys, Limits = Limits,
            Engine = new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu },
        });
        await Host.StartAsync();
        Channel = GrpcChannel.ForAddress(Host.Address);
        Http = new HttpClient { BaseAddress = new Uri(Host.HttpAddress!) };
        Http.DefaultRequestHeaders.Authorization = new("Bearer", Key);
    }

    public async Task DisposeAsync()
    {
        Http.Dispose();
        Channel.Dispose();
        await Host.DisposeAsync();
        File.Delete(_keys);
    }
}

public class LimitsTests(LimitsFixture f) : IClassFixture<LimitsFixture>
{
    private static readonly Metadata Auth = Keyed.Bearer(LimitsFixture.Key);

    private async Task<List<GenerateResponse>> Generate(GenerateRequest request)
    {
        using var call = f.Client.Generate(request, Auth);
        var responses = new List<GenerateResponse>();
        await foreach (var r in call.ResponseStream.ReadAllAsync()) responses.Add(r);
        return responses;
    }

    private async Task<string> Refused(GenerateRequest request, StatusCode status = StatusCode.InvalidArgument)
    {
        var e = await Assert.ThrowsAsync<RpcException>(() => Generate(request));
        Assert.Equal(status, e.StatusCode);
        return e.Status.Detail;
    }

    private async Task<(HttpStatusCode Status, JsonNode Body)> Post(string json)
    {
        using var content = new StringContent(json, Encoding.UTF8, "application/json");
        using var response = await f.Http.PostAsync("/v1/completions", content);
        return (response.StatusCode, (await response.Content.ReadFromJsonAsync<JsonNode>())!);
    }

    private static SteeringSpec Terms(int count)
    {
        var spec = new SteeringSpec();
        for (var i = 0; i < count; i++)
            spec.Terms.Add(new SteeringTerm { Pack = new PackRef { Name = "happy", Strength = 0.5f } });
        return spec;
    }

    [Fact]
    public async Task Prompt_length_is_limited_in_tokens_and_a_prompt_at_the_limit_is_served()
    {
        var ids = new GenerateRequest { MaxTokens = 4 };
        ids.PromptTokenIds.AddRange(Enumerable.Repeat(1, 1).Concat(Enumerable.Repeat(403, 32)));
        Assert.Equal("prompt_token_ids: 33 tokens exceed max_prompt_tokens 32", await Refused(ids));

        var text = string.Concat(Enumerable.Repeat("Once upon a time ", 10));
        var tokens = f.Host.Engine.EncodePrompt(text).Length;
        var detail = await Refused(new GenerateRequest { Prompt = text, MaxTokens = 4 });
        Assert.Equal($"prompt: {tokens} tokens exceed max_prompt_tokens 32", detail);
        // Text that cannot fit is refused before it is encoded, by a bound on its token count.
        var huge = await Refused(new GenerateRequest { Prompt = new string('a', 50_000), MaxTokens = 4 });
        Assert.Matches(@"^prompt: 50000 bytes of text make at least \d+ tokens, more than max_prompt_tokens 32$", huge);

        var (status, body) = await Post($$"""{"prompt":"{{text}}","max_tokens":4}""");
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("prompt", (string?)body["error"]!["param"]);
        Assert.Equal($"prompt: {tokens} tokens exceed max_prompt_tokens 32", (string?)body["error"]!["message"]);

        var atLimit = new GenerateRequest { MaxTokens = 4, Temperature = 0 };
        atLimit.PromptTokenIds.AddRange(ids.PromptTokenIds.Take(32));
        var served = await Generate(atLimit);
        Assert.Equal((32, 4), (served[^1].Usage.PromptTokens, served[^1].Usage.CompletionTokens));
    }

    [Fact]
    public async Task Max_tokens_is_capped_and_an_unset_one_is_lowered_to_the_cap()
    {
        var detail = await Refused(new GenerateRequest { Prompt = "Once", MaxTokens = 49 });
        Assert.Equal("max_tokens: 49 exceeds max_tokens_limit 48", detail);
        var (status, body) = await Post("""{"prompt":"Once","max_tokens":49}""");
        Assert.Equal((HttpStatusCode.BadRequest, "max_tokens"), (status, (string?)body["error"]!["param"]));

        // The server's default (256) would exceed the cap; a request that did not ask gets the cap instead.
        var ids = new GenerateRequest();
        ids.PromptTokenIds.Add(1);
        var served = await Generate(ids);
        Assert.Equal(48, served[^1].Usage.CompletionTokens);
        Assert.Equal(Api.V1.FinishReason.Length, served[^1].FinishReason);
    }

    [Fact]
    public async Task Steering_terms_are_limited_per_request_and_per_compare_arm()
    {
        var request = new GenerateRequest { Prompt = "Once upon a time", MaxTokens = 4, Steering = Terms(3) };
        Assert.Equal("steering.terms: 3 terms exceed max_terms 2", await Refused(request));
        const string pack = """{"pack":{"name":"happy"}}""";
        var (status, body) = await Post(
            $$$"""{"prompt":"Once","max_tokens":4,"steering":{"terms":[{{{pack}}},{{{pack}}},{{{pack}}}]}}""");
        Assert.Equal((HttpStatusCode.BadRequest, "steering.terms"), (status, (string?)body["error"]!["param"]));

        var compare = new CompareRequest { Prompt = "Once upon a time", MaxTokens = 4, Seed = 1 };
        compare.Arms.Add(new SteeringSpec());
        compare.Arms.Add(Terms(3));
        var e = await Assert.ThrowsAsync<RpcException>(() => Compare(compare));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Equal("arms[1].terms: 3 terms exceed max_terms 2", e.Status.Detail);

        request.Steering = Terms(2);
        Assert.Equal(4, (await Generate(request))[^1].Usage.CompletionTokens);
        compare.Arms[1] = Terms(2);
        Assert.Equal(2, (await Compare(compare)).Count(r => r.Summary is not null));
    }

    private async Task<List<CompareResponse>> Compare(CompareRequest request)
    {
        using var call = f.Client.Compare(request, Auth);
        var responses = new List<CompareResponse>();
        await foreach (var r in call.ResponseStream.ReadAllAsync()) responses.Add(r);
        return responses;
    }

    [Fact]
    public async Task Read_out_features_are_limited()
    {
        static FeatureReadout Readout(int count)
        {
            var readout = new FeatureReadout();
            for (var i = 0; i < count; i++)
                readout.Features.Add(new FeatureRef { Hook = "blocks.2.hook_resid_post", Index = i });
            return readout;
        }
        var request = new GenerateRequest { Prompt = "Once upon a time", MaxTokens = 4, Readout = Readout(4) };
        Assert.Equal("readout.features: 4 features exceed max_readout_features 3", await Refused(request));
        var compare = new CompareRequest { Prompt = "Once upon a time", MaxTokens = 4, Seed = 1 };
        compare.Arms.Add(new SteeringSpec());
        compare.Watch.AddRange(Readout(4).Features);
        var e = await Assert.ThrowsAsync<RpcException>(() => Compare(compare));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.Equal("watch: 4 features exceed max_readout_features 3", e.Status.Detail);

        request.Readout = Readout(3);
        var served = await Generate(request);
        Assert.All(served.Where(r => r.TokenIds.Count > 0),
            r => Assert.Equal(3, r.TokenFeatures[0].Sites[0].FeatureIndices.Count));
    }

    [Fact]
    public async Task An_oversized_http_body_is_413_and_the_next_request_is_served()
    {
        var padding = new string(' ', 70 * 1024);
        var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions")
        {
            Content = new StringContent("""{"prompt":"Once","max_tokens":4}""" + padding, Encoding.UTF8,
                "application/json"),
        };
        // The client waits for the server's go-ahead before sending the body, which is refused from its length alone.
        request.Headers.ExpectContinue = true;
        using (var response = await f.Http.SendAsync(request))
        {
            Assert.Equal(HttpStatusCode.RequestEntityTooLarge, response.StatusCode);
            var error = (await response.Content.ReadFromJsonAsync<JsonNode>())!["error"]!;
            Assert.Equal("body", (string?)error["param"]);
            Assert.Equal("the request body exceeds max_request_body_bytes 65536", (string?)error["message"]);
        }
        var (status, body) = await Post("""{"prompt":"Once","max_tokens":4}""");
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal(4, (int)body["usage"]!["completion_tokens"]!);
    }

    [Fact]
    public async Task An_oversized_grpc_message_is_resource_exhausted_and_the_next_call_is_served()
    {
        var oversized = new GenerateRequest { Prompt = new string('a', 70 * 1024), MaxTokens = 4 };
        Assert.Contains("maximum configured message size", await Refused(oversized, StatusCode.ResourceExhausted));
        var served = await Generate(new GenerateRequest { Prompt = "Once", MaxTokens = 4 });
        Assert.Equal(4, served[^1].Usage.CompletionTokens);
    }
}

/// <summary>Per-caller streams and token rate, each on its own server.</summary>
public class CallerLimitTests
{
    private const string Key = "caller-key-0123456789abcdef", OtherKey = "other-key-0123456789abcdef";

    private static async Task<(ServerHost Host, string KeysFile)> Start(ServerLimits limits)
    {
        var keys = Path.GetTempFileName();
        await File.WriteAllTextAsync(keys, $"{Key}\n{OtherKey}\n");
        var host = ServerHost.Create(new ServerOptions
        {
            ModelDirectory = RepoPaths.Stories260kModel, Port = 0, HttpPort = 0, ApiKeysFile = keys, Limits = limits,
            Engine = new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu },
        });
        await host.StartAsync();
        return (host, keys);
    }

    private static async Task<GenerateResponse> Last(Inference.InferenceClient client, GenerateRequest request,
        string key)
    {
        using var call = client.Generate(request, Keyed.Bearer(key));
        GenerateResponse? last = null;
        await foreach (var r in call.ResponseStream.ReadAllAsync()) last = r;
        return last!;
    }

    [Fact]
    public async Task The_stream_past_max_streams_per_key_is_refused_while_the_running_ones_finish()
    {
        var (host, keysFile) = await Start(new ServerLimits { MaxStreamsPerKey = 2 });
        await using var _ = host;
        using var channel = GrpcChannel.ForAddress(host.Address);
        var client = new Inference.InferenceClient(channel);
        var request = new GenerateRequest { Prompt = "Once upon a time", MaxTokens = 200, Temperature = 0 };
        var expected = await Last(client, request, Key);

        // Pace the model loop until both streams have rows (both are admitted by then), then hold it, so that they stay
        // open while the third arrives.
        var seen = new HashSet<long>();
        using var bothSeen = new ManualResetEventSlim(false);
        using var gate = new ManualResetEventSlim(false);
        void Hold(long id, int tokens)
        {
            if (seen.Add(id) && seen.Count == 2) bothSeen.Set();
            if (bothSeen.IsSet) gate.Wait();
            else Thread.Sleep(5);
        }
        host.Engine.TokenGenerated += Hold;
        try
        {
            var running = new[] { Last(client, request, Key), Last(client, request, Key) };
            Assert.True(await Task.Run(() => bothSeen.Wait(TimeSpan.FromSeconds(30))));

            var e = await Assert.ThrowsAsync<RpcException>(() => Last(client, request, Key));
            Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
            Assert.Equal("max_streams_per_key: 2 streams of this caller are running; retry when one ends",
                e.Status.Detail);
            Assert.Equal("1000", e.Trailers.GetValue("grpc-retry-pushback-ms"));
            // Another key has its own streams.
            var other = Last(client, request, OtherKey);

            host.Engine.TokenGenerated -= Hold;
            gate.Set();
            foreach (var r in await Task.WhenAll(running.Append(other)))
                Assert.Equal((expected.Usage.CompletionTokens, expected.FinishReason),
                    (r.Usage.CompletionTokens, r.FinishReason));
        }
        finally
        {
            host.Engine.TokenGenerated -= Hold;
            gate.Set();
            File.Delete(keysFile);
        }
        Assert.Equal(expected.Usage.CompletionTokens, (await Last(client, request, Key)).Usage.CompletionTokens);
    }

    [Fact]
    public async Task The_token_rate_refunds_unused_tokens_refuses_with_retry_after_and_admits_after_refill()
    {
        var clock = new ManualClock();
        var (host, keysFile) = await Start(new ServerLimits { TokensPerMinutePerKey = 120, Clock = clock });
        await using var _ = host;
        try
        {
            using var channel = GrpcChannel.ForAddress(host.Address);
            var client = new Inference.InferenceClient(channel);
            using var http = new HttpClient { BaseAddress = new Uri(host.HttpAddress!) };

            // Reserves 100, generates a few (up to the first '.') and gets the rest back: 100 more fit at once.
            var early = new GenerateRequest
            {
                Prompt = "Once upon a time", MaxTokens = 100, Temperature = 0, Stop = { "." },
            };
            var used = (await Last(client, early, Key)).Usage.CompletionTokens;
            Assert.InRange(used, 1, 19);
            var full = new GenerateRequest { Prompt = "Once upon a time", MaxTokens = 100, Temperature = 0 };
            var second = await Last(client, full, Key);
            var left = 120 - used - second.Usage.CompletionTokens;
            Assert.True(left < 100, $"the first two requests used {used} + {second.Usage.CompletionTokens} tokens");

            var e = await Assert.ThrowsAsync<RpcException>(() => Last(client, full, Key));
            Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
            var wait = TimeSpan.FromSeconds((100.0 - left) * 60 / 120);
            Assert.Equal("tokens_per_minute_per_key: this request reserves 100 tokens (max_tokens × rows) and the "
                + $"caller has {left} left; retry in about {Math.Ceiling(wait.TotalSeconds)} s", e.Status.Detail);
            Assert.InRange(long.Parse(e.Trailers.GetValue("grpc-retry-pushback-ms")!, CultureInfo.InvariantCulture),
                (long)wait.TotalMilliseconds - 1, (long)wait.TotalMilliseconds);

            var request = Keyed.Post("/v1/completions", """{"prompt":"Once","max_tokens":100,"temperature":0}""", Key);
            using (var response = await http.SendAsync(request))
            {
                Assert.Equal(HttpStatusCode.TooManyRequests, response.StatusCode);
                var retryAfter = Math.Ceiling(wait.TotalSeconds).ToString(CultureInfo.InvariantCulture);
                Assert.Equal(retryAfter, response.Headers.GetValues("retry-after").Single());
                var error = (await response.Content.ReadFromJsonAsync<JsonNode>())!["error"]!;
                Assert.StartsWith("tokens_per_minute_per_key: ", (string?)error["message"]);
            }
            // A request the bucket could never hold is a bad request, not a reason to retry.
            var tooLarge = Keyed.Post("/v1/completions", """{"prompt":"Once","max_tokens":70,"n":2}""", Key);
            using (var response = await http.SendAsync(tooLarge))
            {
                Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
                var error = (await response.Content.ReadFromJsonAsync<JsonNode>())!["error"]!;
                Assert.Equal("max_tokens: 70 × 2 rows = 140 tokens exceed tokens_per_minute_per_key 120",
                    (string?)error["message"]);
            }

            // Refill is continuous: a second short of the hint is still too early; a second past it is enough.
            clock.Advance(wait - TimeSpan.FromSeconds(1));
            var tooEarly = await Assert.ThrowsAsync<RpcException>(() => Last(client, full, Key));
            Assert.Equal(StatusCode.ResourceExhausted, tooEarly.StatusCode);
            clock.Advance(TimeSpan.FromSeconds(2));
            var refilled = await Last(client, full, Key);
            Assert.Equal((second.Usage.CompletionTokens, second.FinishReason),
                (refilled.Usage.CompletionTokens, refilled.FinishReason));
        }
        finally
        {
            File.Delete(keysFile);
        }
    }
}

/// <summary>The per-caller limiter alone.</summary>
public class CallerLimiterTests
{
    [Fact]
    public void Callers_are_counted_apart_and_an_ended_lease_gives_back_its_stream_and_unused_tokens()
    {
        var clock = new ManualClock();
        var limiter = new CallerLimiter(new() { MaxStreamsPerKey = 1, TokensPerMinutePerKey = 60, Clock = clock });
        var (a, b) = (new Caller("addr:10.0.0.1", false), new Caller("addr:10.0.0.2", false));
        var lease = limiter.Admit(a, 40, 1);
        Assert.Equal("max_streams_per_key", Assert.Throws<EngineOverloadedException>(() => limiter.Admit(a, 1, 1)).Limit);
        limiter.Admit(b, 60, 1).End(60);
        lease.End(10);
        lease.End(0); // a second end changes nothing
        // 60 − 10 used = 50 left: 50 fit, 51 do not until a second of refill (1 token a second).
        var refused = Assert.Throws<EngineOverloadedException>(() => limiter.Admit(a, 51, 1));
        Assert.Equal(("tokens_per_minute_per_key", TimeSpan.FromSeconds(1)), (refused.Limit, refused.RetryAfter));
        clock.Advance(TimeSpan.FromSeconds(1));
        limiter.Admit(a, 51, 1).End(0);
        // b spent its 60 and has refilled 1 since.
        var spent = Assert.Throws<EngineOverloadedException>(() => limiter.Admit(b, 2, 1));
        Assert.Equal("tokens_per_minute_per_key", spent.Limit);
    }
}
