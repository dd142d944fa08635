using System.Globalization;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace FeatureFlow.Evaluation;

/// <summary>A judge's 0–5 ratings of one text: topic presence and coherence (the paper's two questions).</summary>
public sealed record JudgeRating(double Topic, double Coherence);

public interface ISteeringJudge
{
    Task<JudgeRating> RateAsync(string prompt, string continuation, CancellationToken cancellationToken);
}

/// <summary>
/// An LLM judge behind any OpenAI-compatible <c>/v1/chat/completions</c> endpoint, asked the paper's two
/// questions (topic presence, coherence) on a 0–5 scale in two separate requests at temperature 0, so that one
/// rating cannot anchor the other. The first number 0–5 in the reply is the rating.
/// </summary>
public sealed partial class OpenAiJudge(HttpClient http, Uri endpoint, string model, string topic, string? apiKey = null)
    : ISteeringJudge
{
    public const string TopicRubric =
        "You rate how strongly a short text is about a topic. Topic: {0}. Answer with one integer from 0 to 5: " +
        "0 = absent; 1 = a faint hint; 2 = mentioned in passing; 3 = clearly present; 4 = a main theme; " +
        "5 = the text is entirely about it. Reply with the number only.";

    public const string CoherenceRubric =
        "You rate the fluency and coherence of a short text, whatever its topic. Answer with one integer from 0 to 5: " +
        "0 = gibberish; 1 = mostly broken; 2 = fragments that make some sense; 3 = understandable with clear errors; " +
        "4 = fluent with minor slips; 5 = fully fluent and coherent. Reply with the number only.";

    public Uri Endpoint { get; } = endpoint;

    /// <summary>
    /// The chat-completions address for a server URL: used as is when it already ends in
    /// <c>/chat/completions</c>, else <c>/v1/chat/completions</c> (or <c>/chat/completions</c> after a <c>/v1</c>).
    /// </summary>
    public static Uri ChatCompletionsUri(string url)
    {
        if (!Uri.TryCreate(url, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https"))
            throw new ArgumentException($"--judge-url: '{url}' is not an http(s) URL");
        var path = uri.AbsolutePath.TrimEnd('/');
        if (path.EndsWith("/chat/completions", StringComparison.Ordinal)) return uri;
        var suffix = path.EndsWith("/v1", StringComparison.Ordinal) ? "/chat/completions" : "/v1/chat/completions";
        return new UriBuilder(uri) { Path = path + suffix }.Uri;
    }

    public async Task<JudgeRating> RateAsync(string prompt, string continuation, CancellationToken cancellationToken)
    {
        var text = prompt + continuation;
        var topicRubric = string.Format(CultureInfo.InvariantCulture, TopicRubric, topic);
        var topicRating = await AskAsync(topicRubric, text, cancellationToken).ConfigureAwait(false);
        var coherence = await AskAsync(CoherenceRubric, text, cancellationToken).ConfigureAwait(false);
        return new JudgeRating(topicRating, coherence);
    }

    private async Task<double> AskAsync(string system, string text, CancellationToken cancellationToken)
    {
        var body = new JsonObject
        {
            ["model"] = model,
            ["temperature"] = 0,
            ["messages"] = new JsonArray(
                new JsonObject { ["role"] = "system", ["content"] = system },
                new JsonObject { ["role"] = "user", ["content"] = "Text:\n" + text }),
        };
        using var request = new HttpRequestMessage(HttpMethod.Post, Endpoint) { Content = JsonContent.Create(body) };
        if (apiKey is { Length: > 0 }) request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", apiKey);
        using var response = await http.SendAsync(request, cancellationToken).ConfigureAwait(false);
        var payload = await response.Content.ReadAsStringAsync(cancellationToken).ConfigureAwait(false);
        if (!response.IsSuccessStatusCode)
            throw new InvalidOperationException(
                $"judge at {Endpoint}: {(int)response.StatusCode} {response.ReasonPhrase}: {Trim(payload)}");
        string? content;
        try
        {
            content = JsonNode.Parse(payload)?["choices"]?[0]?["message"]?["content"]?.GetValue<string>();
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"judge at {Endpoint}: the reply is not JSON ({e.Message}): {Trim(payload)}");
        }
        return ParseRating(content ?? throw new InvalidDataException(
            $"judge at {Endpoint}: no choices[0].message.content in {Trim(payload)}"));
    }

    /// <summary>The first number from 0 to 5 standing alone in the reply ("4", "Rating: 3/5", "2.5").</summary>
    public static double ParseRating(string content)
    {
        var match = RatingPattern().Match(content);
        if (!match.Success)
            throw new InvalidDataException($"the judge's reply has no rating from 0 to 5: {Trim(content)}");
        // "5.5" can only be an over-generous 5.
        return Math.Min(5, double.Parse(match.Value, CultureInfo.InvariantCulture));
    }

    private static string Trim(string s) => s.Length <= 200 ? s : s[..200] + "…";

    [GeneratedRegex(@"(?<![\d.])[0-5](\.\d+)?(?![\d.]*\d)")]
    private static partial Regex RatingPattern();
}
