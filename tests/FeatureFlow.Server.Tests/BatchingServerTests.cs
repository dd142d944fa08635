using FeatureFlow.Api.V1;
using FeatureFlow.Engine;
using Grpc.Core;
using Grpc.Net.Client;

namespace FeatureFlow.Server.Tests;

/// <summary>Concurrent streams over gRPC: batch invariance end to end, and the queue limits as status codes.</summary>
public class BatchingServerTests(ServerFixture f) : IClassFixture<ServerFixture>
{
    private static SteeringTerm Vector(string hook, SteeringOperation operation, float value, int seed, SteeringScope scope = SteeringScope.Unspecified)
    {
        var rng = new Random(seed);
        var term = new SteeringTerm { Hook = hook, Operation = operation, Value = value, Scope = scope, Vector = new FeatureVector { EncoderBias = 0.1f, Threshold = 0.05f } };
        term.Vector.Direction.AddRange(Numerics.RandomVector(rng, 64, 0.3f));
        term.Vector.Encoder.AddRange(Numerics.RandomVector(rng, 64, 0.5f));
        return term;
    }

    private static SteeringSpec Spec(params SteeringTerm[] terms)
    {
        var spec = new SteeringSpec();
        spec.Terms.AddRange(terms);
        return spec;
    }

    /// <summary>16 requests that differ in prompt, length, sampling, seed, stop strings and steering.</summary>
    private static GenerateRequest[] MixedRequests()
    {
        SteeringSpec?[] steering =
        [
            null,
            Spec(Vector("blocks.2.hook_resid_post", SteeringOperation.Add, 5f, 1)),
            Spec(Vector("blocks.1.hook_mlp_out", SteeringOperation.Rescale, -2f, 2)),
            Spec(Vector("blocks.3.hook_attn_out", SteeringOperation.Clamp, 3f, 3)),
            Spec(new SteeringTerm { Pack = new PackRef { Name = "happy" } }),
            Spec(Vector("blocks.0.hook_attn_out", SteeringOperation.Add, 2f, 4), Vector("blocks.2.hook_mlp_out", SteeringOperation.Rescale, 0f, 5),
                Vector("blocks.4.hook_resid_post", SteeringOperation.Clamp, 1f, 6, SteeringScope.Generated)),
            Spec(new SteeringTerm { Pack = new PackRef { Name = "no-park", Strength = 0.5f } }),
        ];
        string[] prompts = ["", "Once upon a time", "Tom had a big", "The cat and the dog", "She smiled"];
        var rng = new Random(21);
        return Enumerable.Range(0, 16).Select(i =>
        {
            var r = new GenerateRequest { Prompt = prompts[i % prompts.Length], MaxTokens = 16 + rng.Next(120), Seed = (ulong)rng.Next() };
            switch (i % 4)
            {
                case 0: r.Temperature = 0; break;
                case 1: r.Temperature = 1; break;
                case 2: r.Temperature = 0.7f; r.TopP = 0.85f; break;
                default: r.Temperature = 1.3f; r.TopK = 12; break;
            }
            if (i % 6 == 5) r.Stop.AddRange(["!", " park"]);
            if (steering[i % steering.Length] is { } spec) r.Steering = spec;
            return r;
        }).ToArray();
    }

    private static async Task<(List<int> Ids, List<float> LogProbs, string Text, GenerateResponse Last)> Collect(Inference.InferenceClient client, GenerateRequest request)
    {
        using var call = client.Generate(request);
        var ids = new List<int>();
        var logProbs = new List<float>();
        var text = new System.Text.StringBuilder();
        GenerateResponse? last = null;
        await foreach (var r in call.ResponseStream.ReadAllAsync())
        {
            ids.AddRange(r.TokenIds);
            logProbs.AddRange(r.TokenLogprobs);
            text.Append(r.Text);
            last = r;
        }
        return (ids, logProbs, text.ToString(), last!);
    }

    [Fact]
    public async Task Sixteen_concurrent_mixed_streams_each_give_exactly_what_they_give_alone()
    {
        var requests = MixedRequests();
        var solo = new List<(List<int> Ids, List<float> LogProbs, string Text, GenerateResponse Last)>();
        foreach (var r in requests) solo.Add(await Collect(f.Client, r));

        var engine = f.Host.Engine;
        var calls = new List<Task<(List<int> Ids, List<float> LogProbs, string Text, GenerateResponse Last)>>();
        for (var i = 0; i < requests.Length; i++)
        {
            // The second half joins while the first half is decoding.
            if (i >= 8)
            {
                var target = engine.Figures().DecodeSteps + 2;
                for (var wait = 0; wait < 200 && engine.Figures().DecodeSteps < target && engine.Figures().RunningRows > 0; wait++) await Task.Delay(1);
            }
            calls.Add(Collect(f.Client, requests[i]));
        }
        var batched = await Task.WhenAll(calls);

        for (var i = 0; i < requests.Length; i++)
        {
            Assert.Equal(solo[i].Ids, batched[i].Ids);
            Assert.Equal(solo[i].Text, batched[i].Text);
            Assert.Equal(solo[i].Last.FinishReason, batched[i].Last.FinishReason);
            Assert.Equal(solo[i].LogProbs.Count, solo[i].Ids.Count);
            Assert.Equal(solo[i].LogProbs.Select(BitConverter.SingleToInt32Bits), batched[i].LogProbs.Select(BitConverter.SingleToInt32Bits));
        }
        var figures = engine.Figures();
        Assert.Equal((0, 0, 0L), (figures.RunningRows, figures.QueuedRequests, figures.KvTokensReserved));
    }

    [Fact]
    public async Task A_full_queue_answers_resource_exhausted_naming_the_limit_and_admitted_streams_complete()
    {
        await using var host = ServerHost.Create(new ServerOptions
        {
            ModelDirectory = RepoPaths.Stories260kModel,
            Port = 0,
            Engine = new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu, MaxBatchRows = 1, MaxQueuedRequests = 1 },
        });
        await host.StartAsync();
        using var channel = GrpcChannel.ForAddress(host.Address);
        var client = new Inference.InferenceClient(channel);
        var request = new GenerateRequest { MaxTokens = 200, Temperature = 0 };
        // The loop waits after the running request's third token until the third request has been answered, so the
        // running and the queued request are still there when it arrives, however slow the machine.
        using var answered = new ManualResetEventSlim();
        host.Engine.TokenGenerated += (_, count) =>
        {
            if (count >= 3) answered.Wait(TimeSpan.FromSeconds(30));
        };

        var running = Collect(client, request);
        Task<(List<int> Ids, List<float> LogProbs, string Text, GenerateResponse Last)>? queued = null;
        try
        {
            for (var i = 0; i < 1000 && host.Engine.Figures().RunningRows == 0; i++) await Task.Delay(2);
            queued = Collect(client, request);
            for (var i = 0; i < 1000 && host.Engine.Figures().QueuedRequests == 0; i++) await Task.Delay(2);

            var e = await Assert.ThrowsAsync<RpcException>(() => Collect(client, request));
            Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
            Assert.StartsWith("max_queued_requests:", e.Status.Detail);
            Assert.Contains("retry in about", e.Status.Detail);
        }
        finally
        {
            answered.Set();
        }

        var expected = RunCReference.Case("greedy_bos_200").SampledIds;
        Assert.Equal(expected, (await running).Ids);
        Assert.Equal(expected, (await queued!).Ids);
    }
}
