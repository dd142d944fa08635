using System.Net;
using System.Text.Json;
using FeatureFlow.Evaluation;

namespace FeatureFlow.Evaluation.Tests;

/// <summary>The OpenAI-compatible judge client against a fake handler: no network.</summary>
public sealed class JudgeTests
{
    private sealed class FakeHandler(params (HttpStatusCode Status, string Body)[] replies) : HttpMessageHandler
    {
        private int _next;
        public List<(HttpRequestMessage Request, string Body)> Requests { get; } = [];

        protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request,
            CancellationToken cancellationToken)
        {
            Requests.Add((request, await request.Content!.ReadAsStringAsync(cancellationToken)));
            var (status, body) = replies[_next++];
            return new HttpResponseMessage(status) { Content = new StringContent(body) };
        }
    }

    private static string Reply(string content) =>
        JsonSerializer.Serialize(new { choices = new[] { new { message = new { role = "assistant", content } } } });

    [Fact]
    public async Task Asks_topic_then_coherence_and_parses_each_rating()
    {
        var handler = new FakeHandler((HttpStatusCode.OK, Reply("Rating: 4/5")), (HttpStatusCode.OK, Reply("3")));
        var judge = new OpenAiJudge(new HttpClient(handler), OpenAiJudge.ChatCompletionsUri("http://judge.test:8000"),
            "judge-1", "happy, glad", apiKey: "k");
        var rating = await judge.RateAsync("Once upon a time", " Tim was happy.", CancellationToken.None);
        Assert.Equal(new JudgeRating(4, 3), rating);
        Assert.Equal(2, handler.Requests.Count);
        Assert.All(handler.Requests, r =>
        {
            Assert.Equal(HttpMethod.Post, r.Request.Method);
            Assert.Equal("http://judge.test:8000/v1/chat/completions", r.Request.RequestUri!.ToString());
            Assert.Equal("Bearer k", r.Request.Headers.Authorization!.ToString());
        });
        var topic = JsonDocument.Parse(handler.Requests[0].Body).RootElement;
        Assert.Equal("judge-1", topic.GetProperty("model").GetString());
        Assert.Equal(0, topic.GetProperty("temperature").GetInt32());
        var messages = topic.GetProperty("messages");
        Assert.Equal("system", messages[0].GetProperty("role").GetString());
        Assert.Contains("Topic: happy, glad", messages[0].GetProperty("content").GetString());
        Assert.Equal("Text:\nOnce upon a time Tim was happy.", messages[1].GetProperty("content").GetString());
        var coherence = JsonDocument.Parse(handler.Requests[1].Body).RootElement;
        Assert.Contains("coherence", coherence.GetProperty("messages")[0].GetProperty("content").GetString());
    }

    [Theory]
    [InlineData("4", 4.0)]
    [InlineData("Score: 2.5 out of 5", 2.5)]
    [InlineData("0.", 0.0)]
    [InlineData("I'd say 5.5", 5.0)]
    public void Parses_the_first_rating_from_0_to_5(string content, double expected) =>
        Assert.Equal(expected, OpenAiJudge.ParseRating(content));

    [Theory]
    [InlineData("10")]
    [InlineData("seven")]
    [InlineData("")]
    public void A_reply_without_a_rating_is_an_error(string content) =>
        Assert.Throws<InvalidDataException>(() => OpenAiJudge.ParseRating(content));

    [Theory]
    [InlineData("http://h:1", "http://h:1/v1/chat/completions")]
    [InlineData("http://h:1/v1/", "http://h:1/v1/chat/completions")]
    [InlineData("https://h/api/v1/chat/completions", "https://h/api/v1/chat/completions")]
    public void The_endpoint_is_the_chat_completions_address(string url, string expected) =>
        Assert.Equal(expected, OpenAiJudge.ChatCompletionsUri(url).ToString());

    [Fact]
    public async Task A_failed_request_names_the_status_and_a_bad_url_is_refused()
    {
        var handler = new FakeHandler((HttpStatusCode.Unauthorized, "{\"error\": \"no key\"}"));
        var judge = new OpenAiJudge(new HttpClient(handler), new Uri("http://h/v1/chat/completions"), "m", "t");
        var e = await Assert.ThrowsAsync<InvalidOperationException>(
            () => judge.RateAsync("", "x", CancellationToken.None));
        Assert.Contains("401", e.Message);
        Assert.Null(handler.Requests[0].Request.Headers.Authorization);
        Assert.Throws<ArgumentException>(() => OpenAiJudge.ChatCompletionsUri("ftp://h"));
    }
}
