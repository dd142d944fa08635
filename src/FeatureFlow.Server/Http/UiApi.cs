using System.Text.Json.Nodes;
using FeatureFlow.Api.V1;
using FeatureFlow.Engine;
using FeatureFlow.Server.OpenAi;
using FeatureFlow.Steering.Packs;
using Google.Protobuf;
using Grpc.Core;

namespace FeatureFlow.Server.Http;

/// <summary>
/// The gRPC API's model, pack, SAE, Compare and experiment calls as JSON over HTTP (protobuf's JSON mapping, the same
/// messages), for the browser playground and for clients without gRPC. They share the gRPC service's code paths.
/// </summary>
public static class UiApi
{
    private static readonly JsonFormatter Formatter = new(JsonFormatter.Settings.Default.WithFormatDefaultValues(true));
    private static readonly JsonParser Parser = new(JsonParser.Settings.Default.WithIgnoreUnknownFields(false));

    public static void Map(WebApplication app)
    {
        app.MapGet("/v1/featureflow/model", (InferenceService service) => Proto(service.ModelInfo()));
        app.MapGet("/v1/featureflow/packs", (InferenceService service) => Proto(service.PackList()));
        app.MapGet("/v1/featureflow/saes", (SteeringCatalog catalog) => Results.Json(new JsonObject
        {
            ["saes"] = new JsonArray(catalog.Saes.BySite.OrderBy(s => s.Key.Index)
                .Select(s => (JsonNode)new JsonObject { ["hook"] = s.Key.HookName, ["features"] = s.Value.DSae }).ToArray()),
        }));
        app.MapGet("/v1/featureflow/experiments", (InferenceService service) => Proto(service.ExperimentList()));
        app.MapPost("/v1/featureflow/compare", Compare);
    }

    private static IResult Proto(IMessage message) => Results.Text(Formatter.Format(message), "application/json");

    private static async Task Compare(HttpContext http, InferenceService service)
    {
        if (await OpenAiEndpoints.ReadBody(http) is not { } body) return;
        CompareRequest request;
        try
        {
            request = Parser.Parse<CompareRequest>(body.RootElement.GetRawText());
        }
        catch (InvalidProtocolBufferException e)
        {
            await OpenAiEndpoints.Error(http, 400, $"not a featureflow.v1.CompareRequest: {e.Message}", "body", "invalid_value");
            return;
        }
        var stream = new ServerSentEvents(http);
        try
        {
            await service.RunCompare(request, stream, Security.Caller.Of(http), http.RequestAborted);
        }
        catch (Exception e) when (!http.Response.HasStarted && Refusal.Of(e) is { } refusal)
        {
            await OpenAiEndpoints.Error(http, refusal);
            return;
        }
        catch (Exception e) when (e is not OperationCanceledException && Refusal.Of(e) is { } refusal)
        {
            await stream.Send(OpenAiEndpoints.ErrorObject(refusal.Message, refusal.Param, refusal.Code, refusal.Http).ToJsonString());
        }
        await stream.Send("[DONE]");
    }

    /// <summary>Compare messages as server-sent events: <c>data: {json}</c>, one per message.</summary>
    private sealed class ServerSentEvents(HttpContext http) : IServerStreamWriter<CompareResponse>
    {
        public WriteOptions? WriteOptions { get; set; }

        public Task WriteAsync(CompareResponse message) => WriteAsync(message, http.RequestAborted);

        public Task WriteAsync(CompareResponse message, CancellationToken cancellationToken) => Send(Formatter.Format(message), cancellationToken);

        public async Task Send(string data, CancellationToken cancellationToken = default)
        {
            if (!http.Response.HasStarted)
            {
                http.Response.ContentType = "text/event-stream";
                http.Response.Headers.CacheControl = "no-cache";
            }
            await http.Response.WriteAsync($"data: {data}\n\n", cancellationToken);
            await http.Response.Body.FlushAsync(cancellationToken);
        }
    }
}
