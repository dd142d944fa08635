using System.Diagnostics;
using System.Net;
using System.Text;
using FeatureFlow.Api.V1;
using FeatureFlow.Engine;
using Grpc.Core;
using Grpc.Net.Client;

namespace FeatureFlow.Server.Tests;

/// <summary>
/// A bounded soak at CI scale: 64 streams at a time for a fixed time (60 s; FEATUREFLOW_SOAK_SECONDS overrides it),
/// half over gRPC and half over the OpenAI endpoint, with mixed steering. Every request must succeed, the engine must
/// end idle, and the process's resident memory must stay within a stated bound of where it was after warm-up.
/// </summary>
public class SoakTests
{
    /// <summary>Resident memory may grow this much over the soak (allocator and JIT settling, not per-request leaks).</summary>
    private const long RssBoundBytes = 256L * 1024 * 1024;

    private static readonly string[] Steering =
    [
        "",
        """{"terms":[{"pack":{"name":"happy","strength":0.5}}]}""",
        """{"terms":[{"pack":{"name":"no-mom"}}]}""",
        """{"terms":[{"pack":{"name":"bird","strength":1.2}},{"pack":{"name":"no-park"}}]}""",
    ];

    [Fact]
    public async Task Sixty_four_streams_over_both_endpoints_complete_without_errors_or_leaks()
    {
        var seconds = int.TryParse(Environment.GetEnvironmentVariable("FEATUREFLOW_SOAK_SECONDS"), out var s) ? s : 60;
        await using var host = ServerHost.Create(new ServerOptions
        {
            ModelDirectory = RepoPaths.Stories260kModel, Port = 0, HttpPort = 0,
            Engine = new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu },
            Limits = new Security.ServerLimits { MaxStreamsPerKey = 128 },
        });
        await host.StartAsync();
        using var channel = GrpcChannel.ForAddress(host.Address);
        var client = new Inference.InferenceClient(channel);
        using var http = new HttpClient { BaseAddress = new Uri(host.HttpAddress!) };

        var errors = new System.Collections.Concurrent.ConcurrentQueue<string>();
        long requests = 0, tokens = 0;
        async Task Worker(int id, TimeSpan duration)
        {
            var rng = new Random(id);
            var clock = Stopwatch.StartNew();
            while (clock.Elapsed < duration)
            {
                var steering = Steering[rng.Next(Steering.Length)];
                var maxTokens = 8 + rng.Next(56);
                try
                {
                    var got = id % 2 == 0 ? await Grpc(steering, maxTokens, rng.Next()) : await Http(steering, maxTokens, rng.Next());
                    Interlocked.Add(ref tokens, got);
                    Interlocked.Increment(ref requests);
                }
                catch (Exception e)
                {
                    errors.Enqueue($"worker {id}: {e.GetType().Name}: {e.Message}");
                }
            }
        }
        async Task<int> Grpc(string steering, int maxTokens, int seed)
        {
            var request = new GenerateRequest { Prompt = "Once upon a time", MaxTokens = maxTokens, Seed = (ulong)seed };
            if (steering.Length > 0) request.Steering = Api.V1.SteeringSpec.Parser.ParseJson(steering);
            using var call = client.Generate(request);
            var n = 0;
            await foreach (var r in call.ResponseStream.ReadAllAsync()) n += r.TokenIds.Count;
            return n;
        }
        async Task<int> Http(string steering, int maxTokens, int seed)
        {
            var body = $$"""{"prompt":"Once upon a time","max_tokens":{{maxTokens}},"seed":{{seed}},"stream":true{{(steering.Length > 0 ? ",\"steering\":" + steering : "")}}}""";
            using var response = await http.PostAsync("/v1/completions", new StringContent(body, Encoding.UTF8, "application/json"));
            var text = await response.Content.ReadAsStringAsync();
            if (response.StatusCode != HttpStatusCode.OK || !text.TrimEnd().EndsWith("data: [DONE]", StringComparison.Ordinal) || text.Contains("\"error\""))
                throw new InvalidOperationException($"HTTP {(int)response.StatusCode}: {text[..Math.Min(200, text.Length)]}");
            return text.Split("\"text\":").Length - 1;
        }

        // Warm-up, then the soak.
        await Task.WhenAll(Enumerable.Range(0, 64).Select(i => Worker(1000 + i, TimeSpan.FromSeconds(2))));
        GC.Collect();
        var rssAfterWarmUp = Process.GetCurrentProcess().WorkingSet64;
        await Task.WhenAll(Enumerable.Range(0, 64).Select(i => Worker(i, TimeSpan.FromSeconds(seconds))));
        GC.Collect();
        var rssAtEnd = Process.GetCurrentProcess().WorkingSet64;

        Assert.True(errors.IsEmpty, $"{errors.Count} errors, e.g. {string.Join(" | ", errors.Take(3))}");
        Assert.True(requests > 64, $"only {requests} requests completed");
        Assert.True(tokens > 0);
        var figures = host.Engine.Figures();
        Assert.Equal((0, 0, 0L, 0L), (figures.RunningRows, figures.QueuedRequests, figures.KvTokensReserved, figures.KvTokensInUse));
        Assert.True(rssAtEnd - rssAfterWarmUp < RssBoundBytes,
            $"resident memory grew {(rssAtEnd - rssAfterWarmUp) / 1048576} MB over the soak (bound {RssBoundBytes / 1048576} MB)");
    }
}
