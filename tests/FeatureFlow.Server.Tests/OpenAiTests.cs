using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using FeatureFlow.Api.V1;
using FeatureFlow.Engine;
using Grpc.Core;
using Grpc.Net.Client;

namespace FeatureFlow.Server.Tests;

/// <summary>The shipped model served on gRPC and on the OpenAI-compatible HTTP endpoint.</summary>
public sealed class HttpServerFixture : IAsyncLifetime
{
    public ServerHost Host { get; private set; } = null!;
    public HttpClient Http { get; private set; } = null!;
    public GrpcChannel Channel { get; private set; } = null!;
    public Inference.InferenceClient Client => new(Channel);

    public async Task InitializeAsync()
    {
        Host = ServerHost.Create(new ServerOptions
        {
            ModelDirectory = RepoPaths.Stories260kModel, Port = 0, HttpPort = 0,
            Engine = new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu },
        });
        await Host.StartAsync();
        Http = new HttpClient { BaseAddress = new Uri(Host.HttpAddress!) };
        Channel = GrpcChannel.ForAddress(Host.Address);
    }

    public async Task DisposeAsync()
    {
        Http.Dispose();
        Channel.Dispose();
        await Host.DisposeAsync();
    }
}

public class OpenAiTests(HttpServerFixture f) : IClassFixture<HttpServerFixture>
{
    private static StringContent Json(string json) => new(json, Encoding.UTF8, "application/json");

    [Fact]
    public async Task Models_lists_the_served_model()
    {
        var models = await f.Http.GetFromJsonAsync<JsonObject>("/v1/models");
        Assert.Equal("stories260k", (string?)models!["data"]![0]!["id"]);
    }

    [Fact]
    public async Task A_greedy_completion_reproduces_run_c_and_equals_grpc()
    {
        var c = RunCReference.Case("greedy_prompt_once_upon_a_time");
        var response = await f.Http.PostAsync("/v1/completions", Json($$"""{"model":"stories260k","prompt":"Once upon a time","max_tokens":{{c.SampledIds.Length}},"temperature":0,"logprobs":2}"""));
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.True(response.Headers.Contains("x-request-id"));
        var body = (await response.Content.ReadFromJsonAsync<JsonObject>())!;
        var choice = body["choices"]![0]!;
        Assert.Equal("length", (string?)choice["finish_reason"]);
        Assert.Equal(c.SampledIds.Length, (int)body["usage"]!["completion_tokens"]!);
        var grpc = new StringBuilder();
        using var call = f.Client.Generate(new GenerateRequest { Prompt = "Once upon a time", MaxTokens = c.SampledIds.Length, Temperature = 0 });
        await foreach (var r in call.ResponseStream.ReadAllAsync()) grpc.Append(r.Text);
        Assert.Equal(grpc.ToString(), (string?)choice["text"]);
        var logprobs = choice["logprobs"]!;
        Assert.Equal(c.SampledIds.Length, logprobs["token_logprobs"]!.AsArray().Count);
        Assert.All(logprobs["top_logprobs"]!.AsArray(), t => Assert.Equal(2, t!.AsObject().Count));
    }

    [Fact]
    public async Task Streaming_sends_server_sent_events_ending_with_usage_and_done()
    {
        var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions")
        {
            Content = Json("""{"prompt":"Once upon a time","max_tokens":12,"seed":4,"stream":true,"stream_options":{"include_usage":true},"n":2}"""),
        };
        using var response = await f.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType!.MediaType);
        var lines = (await response.Content.ReadAsStringAsync()).Split('\n').Where(l => l.StartsWith("data: ")).Select(l => l[6..]).ToArray();
        Assert.Equal("[DONE]", lines[^1]);
        var chunks = lines[..^1].Select(l => JsonNode.Parse(l)!).ToArray();
        var usage = chunks[^1]["usage"]!;
        Assert.Equal(24, (int)usage["completion_tokens"]!);
        var texts = chunks[..^1].GroupBy(c => (int)c["choices"]![0]!["index"]!).ToDictionary(g => g.Key, g => string.Concat(g.Select(c => (string?)c["choices"]![0]!["text"])));
        Assert.Equal(2, texts.Count);
        Assert.NotEqual(texts[0], texts[1]); // choice i samples with seed + i
    }

    [Fact]
    public async Task Steering_in_the_body_steers_like_grpc()
    {
        var steering = """{"terms":[{"pack":{"name":"happy","strength":1.5}}]}""";
        var http = await f.Http.PostAsync("/v1/completions", Json($$"""{"prompt":"Once upon a time","max_tokens":20,"temperature":0,"steering":{{steering}}}"""));
        var text = (string?)(await http.Content.ReadFromJsonAsync<JsonObject>())!["choices"]![0]!["text"];
        var plain = await f.Http.PostAsync("/v1/completions", Json("""{"prompt":"Once upon a time","max_tokens":20,"temperature":0}"""));
        Assert.NotEqual((string?)(await plain.Content.ReadFromJsonAsync<JsonObject>())!["choices"]![0]!["text"], text);
        var grpc = new StringBuilder();
        using var call = f.Client.Generate(new GenerateRequest { Prompt = "Once upon a time", MaxTokens = 20, Temperature = 0, Steering = Api.V1.SteeringSpec.Parser.ParseJson(steering) });
        await foreach (var r in call.ResponseStream.ReadAllAsync()) grpc.Append(r.Text);
        Assert.Equal(grpc.ToString(), text);
    }

    [Fact]
    public async Task Chat_completions_explain_that_the_model_has_no_chat_template()
    {
        var response = await f.Http.PostAsync("/v1/chat/completions", Json("""{"model":"stories260k","messages":[{"role":"user","content":"hi"}]}"""));
        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        var error = (await response.Content.ReadFromJsonAsync<JsonObject>())!["error"]!;
        Assert.Equal("chat_template_missing", (string?)error["code"]);
        Assert.Equal("messages", (string?)error["param"]);
    }

    public static TheoryData<string, int, string> BadBodies() => new()
    {
        { "{not json", 400, "body" },
        { "[1, 2]", 400, "body" },
        { """{"prompt": 5}""", 400, "prompt" },
        { """{"max_tokens": "ten"}""", 400, "max_tokens" },
        { """{"max_tokens": -1}""", 400, "max_tokens" },
        { """{"max_tokens": 99999999999}""", 400, "max_tokens" },
        { """{"temperature": -1}""", 400, "temperature" },
        { """{"temperature": 1e300}""", 400, "temperature" },
        { """{"top_p": 0}""", 400, "top_p" },
        { """{"n": 9}""", 400, "n" },
        { """{"stop": [1]}""", 400, "stop[0]" },
        { """{"logprobs": 21}""", 400, "logprobs" },
        { """{"stream": "yes"}""", 400, "stream" },
        { """{"stream_options": {"nope": true}}""", 400, "stream_options.nope" },
        { """{"frequency_penalty": 1}""", 400, "frequency_penalty" },
        { """{"unknown_field": 1}""", 400, "unknown_field" },
        { """{"model": "gpt-4"}""", 404, "model" },
        { """{"steering": {"terms": [{"pack": {"name": "nope"}}]}}""", 404, "steering.terms[0].pack.name" },
        { """{"steering": {"terms": [{"pack": {"name": "../x"}}]}}""", 400, "steering.terms[0].pack.name" },
        { """{"steering": {"bogus": 1}}""", 400, "steering" },
        { """{"steering": {"terms": [{"hook": "blocks.2.hook_resid_post", "operation": "STEERING_OPERATION_ADD", "value": 1e38, "vector": {"direction": [1]}}]}}""", 400, "steering.terms[0].direction" },
        { """{"experiment": "nope", "user": "u"}""", 404, "experiment" },
        { """{"prompt": [1, 9999]}""", 400, "prompt_token_ids" },
    };

    [Theory]
    [MemberData(nameof(BadBodies))]
    public async Task Bad_bodies_get_an_openai_error_naming_the_parameter_and_the_server_keeps_serving(string body, int status, string param)
    {
        var response = await f.Http.PostAsync("/v1/completions", Json(body));
        Assert.Equal(status, (int)response.StatusCode);
        var error = (await response.Content.ReadFromJsonAsync<JsonObject>())!["error"]!;
        Assert.Equal(param, (string?)error["param"]);
        Assert.False(string.IsNullOrEmpty((string?)error["message"]));
        var ok = await f.Http.PostAsync("/v1/completions", Json("""{"prompt":"Once upon a time","max_tokens":3,"temperature":0}"""));
        Assert.Equal(HttpStatusCode.OK, ok.StatusCode);
    }

    [Fact]
    public async Task Health_and_readiness_answer_over_http()
    {
        Assert.Equal("ok", await f.Http.GetStringAsync("/healthz"));
        Assert.Equal(HttpStatusCode.OK, (await f.Http.GetAsync("/readyz")).StatusCode);
    }
}
