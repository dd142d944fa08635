using System.Net;
using FeatureFlow.Api.V1;
using FeatureFlow.Engine;
using Grpc.Core;
using Grpc.Net.Client;

namespace FeatureFlow.Server.Tests;

/// <summary>Graceful shutdown: not ready at once, new work refused, in-flight streams finish or end with a clear status.</summary>
public class DrainTests
{
    [Fact]
    public async Task Stopping_drains_short_streams_ends_long_ones_with_unavailable_and_refuses_new_work()
    {
        var host = ServerHost.Create(new ServerOptions
        {
            ModelDirectory = RepoPaths.Stories260kModel, Port = 0, HttpPort = 0, DrainSeconds = 2,
            Engine = new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu },
        });
        await host.StartAsync();
        using var channel = GrpcChannel.ForAddress(host.Address);
        using var http = new HttpClient { BaseAddress = new Uri(host.HttpAddress!) };
        var client = new Inference.InferenceClient(channel);
        var health = new Grpc.Health.V1.Health.HealthClient(channel);
        Assert.Equal(Grpc.Health.V1.HealthCheckResponse.Types.ServingStatus.Serving, (await health.CheckAsync(new())).Status);
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("/readyz")).StatusCode);

        // ~5 ms a token: the short stream ends well inside the drain time, the long one cannot.
        host.Engine.TokenGenerated += (_, _) => Thread.Sleep(5);
        async Task<(int Tokens, StatusCode Status, FeatureFlow.Api.V1.FinishReason Finish)> Stream(int maxTokens)
        {
            var tokens = 0;
            var finish = FeatureFlow.Api.V1.FinishReason.Unspecified;
            try
            {
                using var call = client.Generate(new GenerateRequest { Prompt = "Once upon a time", MaxTokens = maxTokens, Temperature = 1, Seed = 1 });
                await foreach (var r in call.ResponseStream.ReadAllAsync())
                {
                    tokens += r.TokenIds.Count;
                    if (r.FinishReason != FeatureFlow.Api.V1.FinishReason.Unspecified) finish = r.FinishReason;
                }
                return (tokens, StatusCode.OK, finish);
            }
            catch (RpcException e)
            {
                return (tokens, e.StatusCode, finish);
            }
        }
        var shortStream = Stream(60);
        var longStream = Stream(500);
        for (var i = 0; i < 500 && host.Engine.Figures().RunningRows < 2; i++) await Task.Delay(5);

        var stopping = host.StopAsync();
        // Not ready at once: readiness answers 503 or, once Kestrel has stopped listening, refuses the connection
        // (both fail a Kubernetes readiness probe).
        async Task<bool> Ready()
        {
            try { return (await http.GetAsync("/readyz")).StatusCode == HttpStatusCode.OK; }
            catch (HttpRequestException) { return false; }
        }
        Assert.False(await Ready());
        var refused = await Assert.ThrowsAsync<RpcException>(async () =>
        {
            using var call = client.Generate(new GenerateRequest { MaxTokens = 5 });
            await foreach (var _ in call.ResponseStream.ReadAllAsync()) { }
        });
        Assert.Equal(StatusCode.Unavailable, refused.StatusCode);

        var (shortTokens, shortStatus, shortFinish) = await shortStream;
        Assert.Equal(StatusCode.OK, shortStatus);
        Assert.True(shortFinish != FeatureFlow.Api.V1.FinishReason.Unspecified, "the short stream was cut without a finish reason");
        var (longTokens, longStatus, _) = await longStream;
        Assert.Equal(StatusCode.Unavailable, longStatus);
        Assert.InRange(longTokens, 1, 499);
        await stopping;
        Assert.Equal(0, host.Engine.Figures().RunningRows);
        await host.DisposeAsync();
    }
}
