using System.Net;
using System.Net.Http.Json;
using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;

namespace FeatureFlow.Server.Tests;

/// <summary>Bodies that are not text, and a client that sends its body too slowly: refused, and the server goes on.</summary>
public class HostileInputTests(HttpServerFixture f) : IClassFixture<HttpServerFixture>
{
    private async Task AssertStillServing()
    {
        var ok = await f.Http.PostAsync("/v1/completions", new StringContent("""{"prompt":"Once upon a time","max_tokens":3,"temperature":0}""", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.OK, ok.StatusCode);
    }

    [Fact]
    public async Task A_body_that_is_not_utf8_is_a_400_naming_the_body()
    {
        var bytes = new ByteArrayContent([(byte)'{', (byte)'"', (byte)'p', (byte)'r', 0xC3, 0x28, (byte)'"', (byte)':', (byte)'1', (byte)'}']);
        bytes.Headers.ContentType = new("application/json");
        var response = await f.Http.PostAsync("/v1/completions", bytes);
        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal("body", (string?)(await response.Content.ReadFromJsonAsync<JsonObject>())!["error"]!["param"]);
        await AssertStillServing();
    }

    [Fact]
    public async Task A_slow_loris_body_is_cut_off_and_the_server_keeps_serving()
    {
        var uri = new Uri(f.Host.HttpAddress!);
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(uri.Host, uri.Port);
        var stream = tcp.GetStream();
        var head = $"POST /v1/completions HTTP/1.1\r\nHost: {uri.Authority}\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n";
        await stream.WriteAsync(Encoding.ASCII.GetBytes(head));
        // One byte a second is far below the minimum body data rate; Kestrel ends the request after its grace period.
        var closed = false;
        var buffer = new byte[4096];
        var response = new StringBuilder();
        for (var i = 0; i < 30 && !closed; i++)
        {
            try
            {
                await stream.WriteAsync("{"u8.ToArray());
                await Task.Delay(1000);
                while (stream.DataAvailable)
                {
                    var n = await stream.ReadAsync(buffer);
                    if (n == 0) { closed = true; break; }
                    response.Append(Encoding.ASCII.GetString(buffer, 0, n));
                }
                if (response.Length > 0) closed = true;
            }
            catch (IOException)
            {
                closed = true;
            }
        }
        Assert.True(closed, "the server kept waiting for a body sent at one byte a second for 30 s");
        Assert.True(response.Length == 0 || response.ToString().StartsWith("HTTP/1.1 408", StringComparison.Ordinal),
            $"unexpected answer: {response}");
        await AssertStillServing();
    }
}
