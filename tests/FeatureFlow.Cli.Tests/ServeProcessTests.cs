using System.Diagnostics;
using System.Text.RegularExpressions;
using FeatureFlow.Api.V1;
using Grpc.Core;
using Grpc.Net.Client;

namespace FeatureFlow.Cli.Tests;

/// <summary>`featureflow serve` as its own process, stopped the way a container runtime stops it: SIGTERM.</summary>
public partial class ServeProcessTests
{
    [Fact]
    public async Task Sigterm_while_streaming_drains_the_streams_and_exits_0()
    {
        var start = new ProcessStartInfo("dotnet",
            [Path.Combine(AppContext.BaseDirectory, "featureflow.dll"), "serve", "--model", RepoPaths.Stories260kModel, "--port", "0",
             "--http-port", "0", "--provider", "Cpu", "--drain-seconds", "3"])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        using var server = Process.Start(start)!;
        var log = new System.Collections.Concurrent.ConcurrentQueue<string>();
        var address = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        server.OutputDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            log.Enqueue(e.Data);
            if (GrpcAddress().Match(e.Data) is { Success: true } m) address.TrySetResult(m.Groups[1].Value);
        };
        server.ErrorDataReceived += (_, e) => { if (e.Data is not null) log.Enqueue(e.Data); };
        server.BeginOutputReadLine();
        server.BeginErrorReadLine();
        try
        {
            var url = await address.Task.WaitAsync(TimeSpan.FromSeconds(60));
            using var channel = GrpcChannel.ForAddress(url);
            var client = new Inference.InferenceClient(channel);
            var received = 0;
            var stream = Task.Run(async () =>
            {
                try
                {
                    using var call = client.Generate(new GenerateRequest { MaxTokens = 500, Temperature = 1, Seed = 2 });
                    FeatureFlow.Api.V1.FinishReason finish = default;
                    await foreach (var r in call.ResponseStream.ReadAllAsync())
                    {
                        Interlocked.Add(ref received, r.TokenIds.Count);
                        finish = r.FinishReason == default ? finish : r.FinishReason;
                    }
                    return (StatusCode.OK, finish);
                }
                catch (RpcException e)
                {
                    return (e.StatusCode, FeatureFlow.Api.V1.FinishReason.Unspecified);
                }
            });
            for (var i = 0; i < 1000 && Volatile.Read(ref received) == 0; i++) await Task.Delay(5);
            Assert.True(Volatile.Read(ref received) > 0, "the stream never started");

            Process.Start("kill", ["-TERM", server.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)])!.WaitForExit();
            var (status, finish) = await stream.WaitAsync(TimeSpan.FromSeconds(30));
            // Either the stream finished inside the drain time, or it was ended with the drain status — never cut silently.
            Assert.True(status == StatusCode.OK && finish != FeatureFlow.Api.V1.FinishReason.Unspecified || status == StatusCode.Unavailable,
                $"stream ended with {status} / {finish}");
            await server.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
            Assert.True(server.ExitCode == 0, $"exit code {server.ExitCode}; log:\n{string.Join('\n', log)}");
        }
        finally
        {
            if (!server.HasExited) server.Kill(entireProcessTree: true);
        }
    }

    [GeneratedRegex(@"serving featureflow\.v1\.Inference on (http://\S+)")]
    private static partial Regex GrpcAddress();
}
