using FeatureFlow.Api.V1;
using FeatureFlow.Engine;
using Grpc.Core;
using Grpc.Net.Client;
using Microsoft.Extensions.Logging;

namespace FeatureFlow.Server.Tests;

/// <summary>Request log lines: the request id the client got, and no prompt text unless the operator asks for it.</summary>
public class RequestLogTests
{
    private static async Task<(string Log, string HeaderId, string MessageId)> Serve(bool logPrompts)
    {
        var log = new CapturedLog();
        await using var host = ServerHost.Create(new ServerOptions
        {
            ModelDirectory = RepoPaths.Stories260kModel, Port = 0, LogPrompts = logPrompts,
            Engine = new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu },
        }, logging => logging.AddProvider(log));
        await host.StartAsync();
        using var channel = GrpcChannel.ForAddress(host.Address);
        using var call = new Inference.InferenceClient(channel).Generate(new GenerateRequest { Prompt = "A secret garden story", MaxTokens = 4, Temperature = 0 });
        var headerId = (await call.ResponseHeadersAsync).GetValue("x-request-id")!;
        var messageId = "";
        await foreach (var r in call.ResponseStream.ReadAllAsync()) messageId = messageId.Length > 0 ? messageId : r.RequestId;
        await host.StopAsync();
        return (log.Text, headerId, messageId);
    }

    [Fact]
    public async Task The_request_id_is_in_the_header_the_message_and_the_log_and_prompts_stay_out_by_default()
    {
        var (log, headerId, messageId) = await Serve(logPrompts: false);
        Assert.Equal(32, headerId.Length);
        Assert.Equal(headerId, messageId);
        Assert.Contains($"request {headerId} from", log);
        Assert.Contains($"request {headerId} finished: 4 tokens", log);
        Assert.DoesNotContain("secret garden", log);

        (log, headerId, _) = await Serve(logPrompts: true);
        Assert.Contains("secret garden", log);
    }

    [Fact]
    public void An_unknown_log_format_is_refused_at_start()
    {
        var e = Assert.Throws<ArgumentException>(() => ServerHost.Create(new ServerOptions { ModelDirectory = RepoPaths.Stories260kModel, LogFormat = "xml" }));
        Assert.Contains("xml", e.Message);
    }
}
