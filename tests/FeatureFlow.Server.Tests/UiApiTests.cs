using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json.Nodes;
using FeatureFlow.Api.V1;
using Google.Protobuf;
using Grpc.Core;

namespace FeatureFlow.Server.Tests;

/// <summary>The JSON-over-HTTP API the browser pages use: the same messages and code paths as gRPC.</summary>
public class UiApiTests(HttpServerFixture f) : IClassFixture<HttpServerFixture>
{
    [Fact]
    public async Task Model_packs_saes_and_experiments_are_the_grpc_answers_as_json()
    {
        var model = ModelInfo.Parser.ParseJson(await f.Http.GetStringAsync("/v1/featureflow/model"));
        Assert.Equal(await f.Client.GetModelInfoAsync(new GetModelInfoRequest()), model);
        var packs = ListPacksResponse.Parser.ParseJson(await f.Http.GetStringAsync("/v1/featureflow/packs"));
        Assert.Equal(await f.Client.ListPacksAsync(new ListPacksRequest()), packs);
        var saes = (await f.Http.GetFromJsonAsync<JsonObject>("/v1/featureflow/saes"))!["saes"]!.AsArray();
        Assert.Equal(15, saes.Count);
        Assert.Equal(512, (int)saes[0]!["features"]!);
        ListExperimentsResponse.Parser.ParseJson(await f.Http.GetStringAsync("/v1/featureflow/experiments"));
    }

    [Fact]
    public async Task Compare_over_http_streams_the_same_messages_as_grpc()
    {
        var request = new CompareRequest { Prompt = "Once upon a time", MaxTokens = 16, Temperature = 1, Seed = 5 };
        request.Arms.Add(new Api.V1.SteeringSpec());
        request.Arms.Add(new Api.V1.SteeringSpec { Terms = { new Api.V1.SteeringTerm { Pack = new PackRef { Name = "happy", Strength = 2 } } } });
        var body = new StringContent(JsonFormatter.Default.Format(request), Encoding.UTF8, "application/json");
        using var response = await f.Http.PostAsync("/v1/featureflow/compare", body);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType!.MediaType);
        var events = (await response.Content.ReadAsStringAsync()).Split('\n').Where(l => l.StartsWith("data: ")).Select(l => l[6..]).ToArray();
        Assert.Equal("[DONE]", events[^1]);
        var http = events[..^1].Select(e => CompareResponse.Parser.ParseJson(e)).ToArray();

        using var call = f.Client.Compare(request);
        var grpc = new List<CompareResponse>();
        await foreach (var m in call.ResponseStream.ReadAllAsync()) grpc.Add(m);
        string Tokens(IEnumerable<CompareResponse> ms, int arm) => string.Join(",", ms.Where(m => m.Arm == arm && m.Update is not null).SelectMany(m => m.Update.TokenIds));
        Assert.Equal(Tokens(grpc, 0), Tokens(http, 0));
        Assert.Equal(Tokens(grpc, 1), Tokens(http, 1));
        Assert.Equal(grpc.Where(m => m.Summary is not null).Select(m => m.Summary.Label), http.Where(m => m.Summary is not null).Select(m => m.Summary.Label));
    }

    [Fact]
    public async Task A_bad_compare_is_an_openai_error_naming_the_field()
    {
        var response = await f.Http.PostAsync("/v1/featureflow/compare", new StringContent("""{"prompt":"x"}""", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal("arms", (string?)(await response.Content.ReadFromJsonAsync<JsonObject>())!["error"]!["param"]);
        var unknown = await f.Http.PostAsync("/v1/featureflow/compare", new StringContent("""{"nope":1}""", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.BadRequest, unknown.StatusCode);
    }
}
