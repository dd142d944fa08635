
namespace FeatureFlow.Server.Tests;

/// <summary>
/// The official `openai` npm client against the HTTP endpoint (tests/openai-client; `npm ci --prefix
/// tests/openai-client` installs it, as .ci/run does before the tests).
/// </summary>
public class OpenAiClientTests(HttpServerFixture f) : IClassFixture<HttpServerFixture>
{
    [Fact]
    public async Task The_openai_npm_client_streams_a_plain_and_a_steered_completion_and_sees_the_chat_400()
    {
        var folder = Path.Combine(RepoPaths.Root, "tests", "openai-client");
        Assert.True(Directory.Exists(Path.Combine(folder, "node_modules", "openai")),
            $"the openai npm client is not installed: run `npm ci --prefix {folder}` (the README's test command does)");
        var result = await ServerTestKit.RunNodeScriptAsync(Path.Combine(folder, "test.mjs"), [f.Host.HttpAddress + "/v1"], TimeSpan.FromSeconds(60));
        var plain = result.GetProperty("plain");
        var steered = result.GetProperty("steered");
        var whole = result.GetProperty("whole");
        Assert.StartsWith(", there was a little girl", plain.GetProperty("text").GetString());
        Assert.Equal(plain.GetProperty("text").GetString(), whole.GetProperty("text").GetString());
        Assert.NotEqual(plain.GetProperty("text").GetString(), steered.GetProperty("text").GetString());
        Assert.Equal(24, plain.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        Assert.Equal(24, whole.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
        var chat = result.GetProperty("chat");
        Assert.Equal(400, chat.GetProperty("status").GetInt32());
        Assert.Equal("chat_template_missing", chat.GetProperty("code").GetString());
    }
}
