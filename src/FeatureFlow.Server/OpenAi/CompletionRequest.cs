using System.Text.Json;
using FeatureFlow.Api.V1;
using FeatureFlow.Steering;
using Google.Protobuf;

namespace FeatureFlow.Server.OpenAi;

/// <summary>
/// An OpenAI <c>/v1/completions</c> body, checked field by field (type, then meaning) so that every refusal names
/// its parameter, and turned into the same <see cref="GenerateRequest"/> the gRPC API takes.
/// </summary>
public sealed record CompletionRequest(GenerateRequest Generate, int N, bool Stream, bool IncludeUsage, int? Logprobs, string? Model)
{
    /// <summary>The most choices one request may ask for (each is a row of the batch).</summary>
    public const int MaxChoices = 8;

    private static readonly HashSet<string> Known =
    [
        "model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "n", "stream", "stream_options", "stop", "seed",
        "logprobs", "user", "steering", "experiment",
    ];

    // OpenAI parameters this server does not implement: refused by name rather than silently ignored.
    private static readonly HashSet<string> Unsupported =
        ["echo", "best_of", "suffix", "logit_bias", "presence_penalty", "frequency_penalty"];

    public static CompletionRequest Parse(JsonElement body)
    {
        if (body.ValueKind != JsonValueKind.Object) throw new FieldValidationException("body", "must be a JSON object");
        foreach (var p in body.EnumerateObject())
        {
            if (Unsupported.Contains(p.Name)) throw new FieldValidationException(p.Name, "is not supported by this server");
            if (!Known.Contains(p.Name)) throw new FieldValidationException(p.Name, "unknown field");
        }
        var r = new GenerateRequest();
        if (Get(body, "prompt") is { } prompt)
        {
            switch (prompt.ValueKind)
            {
                case JsonValueKind.String: r.Prompt = prompt.GetString()!; break;
                case JsonValueKind.Array when prompt.EnumerateArray().All(e => e.ValueKind == JsonValueKind.Number):
                    var i = 0;
                    foreach (var id in prompt.EnumerateArray()) r.PromptTokenIds.Add(Int(id, $"prompt[{i++}]"));
                    break;
                default: throw new FieldValidationException("prompt", "must be a string or an array of token ids (one prompt per request)");
            }
        }
        if (Get(body, "max_tokens") is { } maxTokens) r.MaxTokens = Int(maxTokens, "max_tokens");
        if (Get(body, "temperature") is { } temperature) r.Temperature = Float(temperature, "temperature");
        if (Get(body, "top_p") is { } topP) r.TopP = Float(topP, "top_p");
        if (Get(body, "top_k") is { } topK) r.TopK = Int(topK, "top_k");
        if (Get(body, "seed") is { } seed)
            r.Seed = seed.ValueKind == JsonValueKind.Number && seed.TryGetInt64(out var s) ? unchecked((ulong)s)
                : throw new FieldValidationException("seed", "must be an integer");
        if (Get(body, "stop") is { } stop)
        {
            if (stop.ValueKind == JsonValueKind.String) r.Stop.Add(stop.GetString()!);
            else if (stop.ValueKind == JsonValueKind.Array)
            {
                var i = 0;
                foreach (var e in stop.EnumerateArray())
                    r.Stop.Add(e.ValueKind == JsonValueKind.String ? e.GetString()! : throw new FieldValidationException($"stop[{i++}]", "must be a string"));
            }
            else throw new FieldValidationException("stop", "must be a string or an array of strings");
        }
        if (Get(body, "steering") is { } steering)
        {
            try { r.Steering = JsonParser.Default.Parse<Api.V1.SteeringSpec>(steering.GetRawText()); }
            catch (InvalidProtocolBufferException e) { throw new FieldValidationException("steering", $"not a featureflow.v1.SteeringSpec: {e.Message}"); }
        }
        if (Get(body, "experiment") is { } experiment) r.Experiment = Text(experiment, "experiment");
        if (Get(body, "user") is { } user) r.SubjectId = Text(user, "user");
        var n = Get(body, "n") is { } nValue ? Int(nValue, "n") : 1;
        if (n < 1 || n > MaxChoices) throw new FieldValidationException("n", $"must be in 1..{MaxChoices}, got {n}");
        // Legacy completions: logprobs N returns the sampled tokens' log-probabilities and the N most likely.
        int? logprobs = Get(body, "logprobs") is { } lp ? Int(lp, "logprobs") : null;
        if (logprobs is < 0 or > Engine.GenerationLimits.MaxTopLogProbs)
            throw new FieldValidationException("logprobs", $"must be in 0..{Engine.GenerationLimits.MaxTopLogProbs}, got {logprobs}");
        r.TopLogprobs = logprobs ?? 0;
        var stream = Get(body, "stream") is { } st && Bool(st, "stream");
        var includeUsage = false;
        if (Get(body, "stream_options") is { } options)
        {
            if (options.ValueKind != JsonValueKind.Object) throw new FieldValidationException("stream_options", "must be an object");
            foreach (var p in options.EnumerateObject())
                includeUsage = p.Name == "include_usage" ? Bool(p.Value, "stream_options.include_usage")
                    : throw new FieldValidationException($"stream_options.{p.Name}", "unknown field");
        }
        var model = Get(body, "model") is { } m ? Text(m, "model") : null;
        return new CompletionRequest(r, n, stream, includeUsage, logprobs, model);
    }

    /// <summary>A present, non-null property (null counts as absent, as OpenAI treats it).</summary>
    private static JsonElement? Get(JsonElement body, string name) =>
        body.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    private static int Int(JsonElement e, string field) =>
        e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out var v) ? v
            : throw new FieldValidationException(field, $"must be an integer in the 32-bit range, got {e.GetRawText()}");

    private static float Float(JsonElement e, string field)
    {
        if (e.ValueKind != JsonValueKind.Number || !e.TryGetDouble(out var v)) throw new FieldValidationException(field, $"must be a number, got {e.GetRawText()}");
        var f = (float)v;
        return float.IsFinite(f) ? f : throw new FieldValidationException(field, $"{e.GetRawText()} does not fit a 32-bit float");
    }

    private static bool Bool(JsonElement e, string field) => e.ValueKind switch
    {
        JsonValueKind.True => true,
        JsonValueKind.False => false,
        _ => throw new FieldValidationException(field, $"must be true or false, got {e.GetRawText()}"),
    };

    private static string Text(JsonElement e, string field) =>
        e.ValueKind == JsonValueKind.String ? e.GetString()! : throw new FieldValidationException(field, $"must be a string, got {e.GetRawText()}");
}
