using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using FeatureFlow.Api.V1;
using FeatureFlow.Engine;
using FeatureFlow.Server;
using Grpc.Core;
using Grpc.Net.Client;
using Microsoft.Extensions.Logging;

namespace FeatureFlow.Cli;

/// <summary>
/// <c>featureflow bench serving</c>: aggregate decode throughput at several numbers of concurrent gRPC streams,
/// next to the in-process engine, from one run with the modes interleaved round by round.
/// </summary>
public static class BenchCommand
{
    public static Command Build(TextWriter output, TextWriter error)
    {
        var model = ServeCommand.ModelOption();
        var streams = new Option<string>("--streams") { Description = "comma-separated numbers of concurrent streams", DefaultValueFactory = _ => "1,4,16,64" };
        var maxTokens = new Option<int>("--max-tokens") { Description = "tokens each stream asks for", DefaultValueFactory = _ => 200 };
        var rounds = new Option<int>("--rounds") { Description = "rounds (each runs every mode once; the table shows medians)", DefaultValueFactory = _ => 5 };
        var threads = ServeCommand.IntraOpThreadsOption();
        var serving = new Command("serving", "Aggregate tokens/s at 1, 4, 16, 64 concurrent streams through gRPC and through the OpenAI-compatible endpoint of an in-process server, and the in-process engine alone.")
        {
            model, streams, maxTokens, rounds, threads,
        };
        serving.SetAction((parse, ct) => CliApp.Guard(error, async () =>
        {
            var levels = parse.GetValue(streams)!.Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray();
            var options = new ServerOptions
            {
                ModelDirectory = parse.GetValue(model)!,
                Port = 0,
                HttpPort = 0,
                Engine = new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu, IntraOpThreads = parse.GetValue(threads) },
                // All streams come from one address, which the per-caller limit would otherwise cap.
                Limits = new() { MaxStreamsPerKey = Math.Max(1, levels.Max()) },
            };
            var startClock = Stopwatch.StartNew();
            await using var host = ServerHost.Create(options, logging => logging.SetMinimumLevel(LogLevel.Warning));
            await host.StartAsync(ct);
            var startMs = startClock.Elapsed.TotalMilliseconds;
            var arch = host.Engine.Architecture;
            var rowBytes = 2L * arch.Layers * arch.KvHeads * arch.ContextLength * arch.HeadSize * sizeof(float);
            await output.WriteLineAsync(string.Create(CultureInfo.InvariantCulture,
                $"Server start-up (load the model, sessions, KV cache; listen): {startMs:F0} ms. Memory per active stream: " +
                $"the KV cache is preallocated at start-up, {rowBytes / 1024.0:F0} KiB per row × {options.Engine.MaxBatchRows} " +
                $"rows = {rowBytes * options.Engine.MaxBatchRows / 1048576.0:F1} MiB, so a stream adds its steering rows " +
                $"and buffers only; process working set after start-up {Environment.WorkingSet / 1048576.0:F0} MiB.\n"));
            using var channel = GrpcChannel.ForAddress(host.Address);
            var client = new Inference.InferenceClient(channel);
            using var http = new HttpClient { BaseAddress = new Uri(host.HttpAddress!), Timeout = TimeSpan.FromMinutes(10) };
            await RunAsync(host.Engine, client, http, levels, parse.GetValue(maxTokens), parse.GetValue(rounds), output, error, ct);
            return 0;
        }));
        return new Command("bench", "Benchmarks of the serving path.") { serving };
    }

    /// <summary>One mode's run: throughput, batch size, and where the loop's time went (per decode step).</summary>
    private sealed record Sample(double TokensPerSecond, double RowsPerStep, double ModelMs, double StepMs, double LoopShare,
        double FirstTokenMs);

    /// <summary>Tokens all streams received, and each stream's time to its first token.</summary>
    private sealed record Run(long Tokens, double[] FirstTokenMs);

    /// <summary>Runs one stream per index concurrently, timing each stream's first token from the common start.</summary>
    private static async Task<Run> Streams(int streams, Func<int, Action, Task<long>> stream)
    {
        var clock = Stopwatch.StartNew();
        var first = new double[streams];
        var counts = await Task.WhenAll(Enumerable.Range(0, streams).Select(i =>
        {
            var seen = false;
            return stream(i, () =>
            {
                if (seen) return;
                seen = true;
                first[i] = clock.Elapsed.TotalMilliseconds;
            });
        }));
        return new Run(counts.Sum(), first);
    }

    private static async Task RunAsync(GenerationEngine engine, Inference.InferenceClient client, HttpClient http, int[] levels, int maxTokens, int rounds,
        TextWriter output, TextWriter error, CancellationToken ct)
    {
        static string Label(int n) => $"{n} stream{(n == 1 ? "" : "s")}";
        var modes = new List<(string Name, Func<int, Task<Run>> Run)>();
        modes.AddRange(levels.Select(n => ($"gRPC, {Label(n)}", (Func<int, Task<Run>>)(r => Grpc(client, n, maxTokens, r, ct)))));
        modes.AddRange(levels.Select(n => ($"OpenAI /v1/completions (SSE), {Label(n)}", (Func<int, Task<Run>>)(r => OpenAi(http, n, maxTokens, r, ct)))));
        modes.AddRange(levels.Select(n => ($"engine in-process, {Label(n)}", (Func<int, Task<Run>>)(r => InProcess(engine, n, maxTokens, r, ct)))));
        var samples = modes.ToDictionary(m => m.Name, _ => new List<Sample>());
        var idleWorkingSet = Environment.WorkingSet;
        var peakWorkingSet = idleWorkingSet;
        // Warm-up: one of each, not recorded.
        foreach (var (_, run) in modes) await run(-1);
        for (var round = 0; round < rounds; round++)
        {
            foreach (var (name, run) in modes)
            {
                var before = engine.Figures();
                var clock = Stopwatch.StartNew();
                var (tokens, firstTokenMs) = await run(round);
                var seconds = clock.Elapsed.TotalSeconds;
                var after = engine.Figures();
                var steps = after.DecodeSteps - before.DecodeSteps;
                var perStep = Math.Max(1, steps);
                samples[name].Add(new Sample(tokens / seconds, (after.DecodeRows - before.DecodeRows) / (double)perStep,
                    1000 * (after.DecodeModelSeconds - before.DecodeModelSeconds) / perStep,
                    1000 * (after.DecodeStepSeconds - before.DecodeStepSeconds) / perStep,
                    (after.DecodeStepSeconds - before.DecodeStepSeconds) / seconds, firstTokenMs.Order().ElementAt(firstTokenMs.Length / 2)));
            }
            await error.WriteLineAsync($"round {round + 1}/{rounds} done");
            peakWorkingSet = Math.Max(peakWorkingSet, Environment.WorkingSet);
        }

        double Median(IEnumerable<double> xs) { var s = xs.Order().ToArray(); return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2; }
        var single = Median(samples[$"gRPC, {Label(levels[0])}"].Select(s => s.TokensPerSecond));
        var inProcess = Median(samples[$"engine in-process, {Label(levels[0])}"].Select(s => s.TokensPerSecond));
        await output.WriteLineAsync($"| mode | tokens/s (median of {rounds}) | min – max | × gRPC {Label(levels[0])} | rows per decode step " +
            "| model ms per step | step ms (model + sampling + streaming) | loop busy | first token ms (median stream) |");
        await output.WriteLineAsync("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var (name, _) in modes)
        {
            var tps = samples[name].Select(s => s.TokensPerSecond).ToArray();
            var median = Median(tps);
            await output.WriteLineAsync(string.Create(CultureInfo.InvariantCulture,
                $"| {name} | {median:F0} | {tps.Min():F0} – {tps.Max():F0} | {median / single:F2} | {Median(samples[name].Select(s => s.RowsPerStep)):F1} " +
                $"| {Median(samples[name].Select(s => s.ModelMs)):F3} | {Median(samples[name].Select(s => s.StepMs)):F3} | {Median(samples[name].Select(s => s.LoopShare)):P0} " +
                $"| {Median(samples[name].Select(s => s.FirstTokenMs)):F1} |"));
        }
        await output.WriteLineAsync(string.Create(CultureInfo.InvariantCulture, $"\ngRPC ÷ in-process engine at {Label(levels[0])}: {single / inProcess:F2}"));
        await output.WriteLineAsync(string.Create(CultureInfo.InvariantCulture,
            $"Working set before the rounds {idleWorkingSet / 1048576.0:F0} MiB, highest after a round " +
            $"{peakWorkingSet / 1048576.0:F0} MiB (up to {levels.Max()} concurrent streams)."));
    }

    private static string Prompt(int i) => (i % 4) switch { 0 => "", 1 => "Once upon a time", 2 => "Tom had a big", _ => "The little cat" };

    private static ulong Seed(int round, int i) => (ulong)(round + 2) * 10_000 + (ulong)i;

    private static Task<Run> InProcess(GenerationEngine engine, int streams, int maxTokens, int round, CancellationToken ct) =>
        Streams(streams, async (i, firstToken) =>
        {
            var request = new GenerationRequest
            {
                PromptIds = engine.EncodePrompt(Prompt(i)),
                MaxTokens = maxTokens,
                Sampling = new SamplingOptions { Temperature = 1f, Seed = Seed(round, i) },
            };
            long tokens = 0;
            await foreach (var u in engine.GenerateAsync(request, ct))
            {
                if (u.TokenIds.Count > 0) firstToken();
                tokens += u.TokenIds.Count;
            }
            return tokens;
        });

    private static Task<Run> Grpc(Inference.InferenceClient client, int streams, int maxTokens, int round, CancellationToken ct) =>
        Streams(streams, async (i, firstToken) =>
        {
            using var call = client.Generate(new GenerateRequest { Prompt = Prompt(i), MaxTokens = maxTokens, Temperature = 1f, Seed = Seed(round, i) }, cancellationToken: ct);
            long tokens = 0;
            await foreach (var r in call.ResponseStream.ReadAllAsync(ct))
            {
                if (r.TokenIds.Count > 0) firstToken();
                tokens += r.TokenIds.Count;
            }
            return tokens;
        });

    /// <summary>Streamed completions over HTTP/1.1 server-sent events; the tokens are the final chunk's usage.</summary>
    private static Task<Run> OpenAi(HttpClient http, int streams, int maxTokens, int round, CancellationToken ct) =>
        Streams(streams, async (i, firstToken) =>
        {
            var body = new System.Text.Json.Nodes.JsonObject
            {
                ["prompt"] = Prompt(i), ["max_tokens"] = maxTokens, ["temperature"] = 1.0, ["seed"] = Seed(round, i),
                ["stream"] = true, ["stream_options"] = new System.Text.Json.Nodes.JsonObject { ["include_usage"] = true },
            };
            using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions")
            {
                Content = new StringContent(body.ToJsonString(), System.Text.Encoding.UTF8, "application/json"),
            };
            using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, ct);
            response.EnsureSuccessStatusCode();
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(ct));
            long tokens = 0;
            while (await reader.ReadLineAsync(ct) is { } line)
            {
                if (!line.StartsWith("data: {", StringComparison.Ordinal)) continue;
                using var chunk = System.Text.Json.JsonDocument.Parse(line.AsMemory(6));
                firstToken();
                if (chunk.RootElement.TryGetProperty("usage", out var usage) && usage.ValueKind == System.Text.Json.JsonValueKind.Object)
                    tokens = usage.GetProperty("completion_tokens").GetInt64();
            }
            return tokens;
        });
}
