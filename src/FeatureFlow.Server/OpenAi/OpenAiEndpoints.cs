using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using FeatureFlow.Engine;
using FeatureFlow.Steering;
using FeatureFlow.Steering.Packs;

namespace FeatureFlow.Server.OpenAi;

/// <summary>
/// The OpenAI-compatible HTTP API (<c>/v1/models</c>, <c>/v1/completions</c>, <c>/v1/chat/completions</c>) over
/// the same pipeline as gRPC: existing OpenAI clients work unchanged, and steering, experiments and the arm ride
/// along as extra JSON fields. Errors use OpenAI's error object.
/// </summary>
public static class OpenAiEndpoints
{
    public static void Map(WebApplication app)
    {
        app.MapGet("/v1/models", (GenerationEngine engine) => Results.Json(new JsonObject
        {
            ["object"] = "list",
            ["data"] = new JsonArray(Model(engine)),
        }));
        app.MapPost("/v1/completions", Completions);
        app.MapPost("/v1/chat/completions", Chat);
    }

    private static JsonObject Model(GenerationEngine engine) => new()
    {
        ["id"] = engine.Folder.Manifest.Name,
        ["object"] = "model",
        ["created"] = 0,
        ["owned_by"] = "featureflow",
    };

    private static async Task Chat(HttpContext http, GenerationEngine engine)
    {
        if (await ReadBody(http) is null) return;
        // The shipped model folders carry no chat template; answering with one made up would mislead clients.
        await Error(http, 400, $"model '{engine.Folder.Manifest.Name}' ships no chat template, so it cannot take chat messages; use /v1/completions",
            "messages", "chat_template_missing");
    }

    private static async Task Completions(HttpContext http, GenerationEngine engine, GenerationPipeline pipeline, ILoggerFactory loggers)
    {
        if (await ReadBody(http) is not { } body) return;
        CompletionRequest request;
        SubmittedGeneration submitted;
        try
        {
            request = CompletionRequest.Parse(body.RootElement);
            if (request.Model is { } model && model != engine.Folder.Manifest.Name)
                throw new PackNotFoundException("model", $"model '{model}' is not served here (serving '{engine.Folder.Manifest.Name}')");
            submitted = pipeline.Submit(request.Generate, Security.Caller.Of(http), request.N);
        }
        catch (Exception e) when (Refusal.Of(e) is { } refusal)
        {
            await Error(http, refusal);
            return;
        }
        using (submitted)
        {
            http.Response.Headers["x-request-id"] = submitted.RequestId;
            var completion = new Completion(engine, pipeline, submitted, request);
            try
            {
                if (request.Stream) await completion.StreamAsync(http);
                else await completion.RespondAsync(http);
            }
            catch (Exception e) when (!http.Response.HasStarted && e is GenerationFailedException or EngineShutdownException)
            {
                await Error(http, Refusal.Of(e)!);
            }
            catch (OperationCanceledException) when (http.RequestAborted.IsCancellationRequested)
            {
                loggers.CreateLogger("FeatureFlow.OpenAi").LogDebug("completion {Id} cancelled by the client", submitted.RequestId);
            }
        }
    }

    /// <summary>The request body as JSON, or null after answering 400 for malformed JSON.</summary>
    internal static async Task<JsonDocument?> ReadBody(HttpContext http)
    {
        try
        {
            // Read whole (Kestrel bounds its size) and check the encoding first: the JSON reader only decodes
            // property names when they are used, and invalid UTF-8 there would surface later as a server error.
            using var buffer = new MemoryStream();
            await http.Request.Body.CopyToAsync(buffer, http.RequestAborted);
            if (!System.Text.Unicode.Utf8.IsValid(buffer.GetBuffer().AsSpan(0, (int)buffer.Length)))
            {
                await Error(http, 400, "the body is not valid UTF-8", "body", "invalid_json");
                return null;
            }
            return JsonDocument.Parse(buffer.GetBuffer().AsMemory(0, (int)buffer.Length));
        }
        catch (JsonException e)
        {
            await Error(http, 400, $"the body is not valid JSON: {e.Message}", "body", "invalid_json");
            return null;
        }
        catch (BadHttpRequestException e) when (e.StatusCode == StatusCodes.Status413PayloadTooLarge)
        {
            var limit = http.Features.Get<Microsoft.AspNetCore.Http.Features.IHttpMaxRequestBodySizeFeature>()?.MaxRequestBodySize;
            await Error(http, 413, $"the request body exceeds max_request_body_bytes {limit}", "body", "request_too_large");
            return null;
        }
    }

    /// <summary>A refusal as an OpenAI error object, with Retry-After when it has a retry hint.</summary>
    public static Task Error(HttpContext http, Refusal refusal)
    {
        if (refusal.RetryAfter is { } retry)
            http.Response.Headers.RetryAfter = Math.Ceiling(retry.TotalSeconds).ToString(System.Globalization.CultureInfo.InvariantCulture);
        return Error(http, refusal.Http, refusal.Message, refusal.Param, refusal.Code);
    }

    public static Task Error(HttpContext http, int status, string message, string? param, string code)
    {
        http.Response.StatusCode = status;
        return http.Response.WriteAsJsonAsync(ErrorObject(message, param, code, status));
    }

    public static JsonObject ErrorObject(string message, string? param, string code, int status) => new()
    {
        ["error"] = new JsonObject
        {
            ["message"] = message,
            ["type"] = status switch { 429 => "rate_limit_error", 401 => "authentication_error", 403 => "permission_error", >= 500 => "server_error", _ => "invalid_request_error" },
            ["param"] = param,
            ["code"] = code,
        },
    };

    /// <summary>One completion's choices as they stream or as one response body.</summary>
    private sealed class Completion(GenerationEngine engine, GenerationPipeline pipeline, SubmittedGeneration submitted,
        CompletionRequest request)
    {
        private readonly string _id = "cmpl-" + submitted.RequestId;
        private readonly long _created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        private readonly string _model = engine.Folder.Manifest.Name;
        private int _completionTokens;

        private JsonObject Envelope(JsonArray choices)
        {
            var o = new JsonObject { ["id"] = _id, ["object"] = "text_completion", ["created"] = _created, ["model"] = _model, ["choices"] = choices };
            if (submitted.Arm is not null) (o["experiment"], o["experiment_arm"]) = (submitted.Experiment, submitted.Arm);
            return o;
        }

        private JsonObject Usage() => new()
        {
            ["prompt_tokens"] = PromptTokens,
            ["completion_tokens"] = _completionTokens,
            ["total_tokens"] = PromptTokens + _completionTokens,
        };

        private int PromptTokens { get; set; }

        public async Task RespondAsync(HttpContext http)
        {
            var choices = new JsonArray();
            for (var i = 0; i < submitted.Rows.Count; i++)
            {
                var text = new StringBuilder();
                var logprobs = new LogprobsBuilder(engine, request.Logprobs);
                string? finish = null;
                await foreach (var u in submitted.Rows[i].ReadAllAsync(http.RequestAborted))
                {
                    Count(u);
                    logprobs.Add(u, text.Length);
                    text.Append(u.Text);
                    finish = Finish(u) ?? finish;
                }
                choices.Add(new JsonObject { ["text"] = text.ToString(), ["index"] = i, ["logprobs"] = logprobs.Build(), ["finish_reason"] = finish });
            }
            var body = Envelope(choices);
            body["usage"] = Usage();
            pipeline.Finished(submitted, _completionTokens);
            await http.Response.WriteAsJsonAsync(body, http.RequestAborted);
        }

        /// <summary>Server-sent events: one chunk per choice per update, then usage if asked, then [DONE].</summary>
        public async Task StreamAsync(HttpContext http)
        {
            http.Response.ContentType = "text/event-stream";
            http.Response.Headers.CacheControl = "no-cache";
            var offsets = new int[submitted.Rows.Count];
            try
            {
                await RowStreams.InterleaveAsync(submitted.Rows, (index, u) =>
                {
                    var logprobs = new LogprobsBuilder(engine, request.Logprobs);
                    logprobs.Add(u, offsets[index]);
                    offsets[index] += u.Text.Length;
                    lock (this) Count(u);
                    return Envelope(new JsonArray(new JsonObject
                    {
                        ["text"] = u.Text, ["index"] = index, ["logprobs"] = logprobs.Build(), ["finish_reason"] = Finish(u),
                    }));
                }, chunk => Send(http, chunk.ToJsonString()), http.RequestAborted);
                pipeline.Finished(submitted, _completionTokens);
            }
            catch (Exception e) when (e is GenerationFailedException or EngineShutdownException)
            {
                // Headers are gone: the error travels as an event, in OpenAI's error shape, before [DONE].
                var refusal = Refusal.Of(e)!;
                await Send(http, ErrorObject(refusal.Message, refusal.Param, refusal.Code, refusal.Http).ToJsonString());
            }
            if (request.IncludeUsage)
            {
                var usage = Envelope([]);
                usage["usage"] = Usage();
                await Send(http, usage.ToJsonString());
            }
            await Send(http, "[DONE]");
        }

        private static async Task Send(HttpContext http, string data)
        {
            await http.Response.WriteAsync($"data: {data}\n\n", http.RequestAborted);
            await http.Response.Body.FlushAsync(http.RequestAborted);
        }

        private void Count(GenerationUpdate u)
        {
            _completionTokens += u.TokenIds.Count;
            if (u.Usage is { } usage) PromptTokens = usage.PromptTokens;
        }

        private static string? Finish(GenerationUpdate u) => u.Finish switch
        {
            Engine.FinishReason.Length => "length",
            Engine.FinishReason.Stop => "stop",
            Engine.FinishReason.Error => "error",
            Engine.FinishReason.Cancelled => "cancelled",
            _ => null,
        };
    }

    /// <summary>The legacy completions <c>logprobs</c> object: tokens, their log-probabilities, alternatives, offsets.</summary>
    private sealed class LogprobsBuilder(GenerationEngine engine, int? top)
    {
        private readonly JsonArray _tokens = [], _logprobs = [], _top = [], _offsets = [];
        public void Add(GenerationUpdate u, int textOffset)
        {
            for (var k = 0; k < u.TokenIds.Count; k++)
            {
                _tokens.Add(Piece(u.TokenIds[k]));
                _logprobs.Add(u.LogProbs[k]);
                _offsets.Add(textOffset);
                if (u.TopLogProbs.Count > k)
                {
                    var alternatives = new JsonObject();
                    foreach (var t in u.TopLogProbs[k]) alternatives[Piece(t.Token)] = t.LogProb;
                    _top.Add(alternatives);
                }
            }
        }

        private string Piece(int token) => Encoding.UTF8.GetString(engine.Tokenizer.DecodePiece(0, token));

        public JsonObject? Build() => top is null ? null : new JsonObject
        {
            ["tokens"] = _tokens, ["token_logprobs"] = _logprobs, ["top_logprobs"] = _top, ["text_offset"] = _offsets,
        };
    }
}
