using FeatureFlow.Api.V1;
using FeatureFlow.Engine;
using Grpc.Core;
using ApiFinishReason = FeatureFlow.Api.V1.FinishReason;

namespace FeatureFlow.Server.Tests;

public class InferenceServiceTests(ServerFixture f) : IClassFixture<ServerFixture>
{
    private static async Task<(List<int> Ids, string Text, GenerateResponse Last, int Messages)> Collect(Inference.InferenceClient client, GenerateRequest request)
    {
        using var call = client.Generate(request);
        var ids = new List<int>();
        var text = new System.Text.StringBuilder();
        GenerateResponse? last = null;
        var messages = 0;
        await foreach (var r in call.ResponseStream.ReadAllAsync())
        {
            ids.AddRange(r.TokenIds);
            text.Append(r.Text);
            last = r;
            messages++;
        }
        return (ids, text.ToString(), last!, messages);
    }

    public static TheoryData<string> RunCCases() => new(RunCReference.Cases.Select(c => c.Name));

    [Theory]
    [MemberData(nameof(RunCCases))]
    public async Task Greedy_generation_over_grpc_reproduces_run_c_token_for_token(string name)
    {
        var c = RunCReference.Case(name);
        // The BOS cases are run.c with an empty prompt; the other is the prompt "Once upon a time".
        var prompt = c.PromptIds.Length == 1 ? "" : "Once upon a time";
        var (ids, _, last, messages) = await Collect(f.Client, new GenerateRequest { Prompt = prompt, MaxTokens = c.SampledIds.Length, Temperature = 0 });
        Assert.Equal(c.SampledIds, ids);
        Assert.Equal(ApiFinishReason.Length, last.FinishReason);
        Assert.Equal(c.PromptIds.Length, last.Usage.PromptTokens);
        Assert.Equal(c.SampledIds.Length, last.Usage.CompletionTokens);
        Assert.True(messages > 1, "the completion was not streamed");
    }

    [Fact]
    public async Task Prompt_token_ids_are_used_verbatim()
    {
        var c = RunCReference.Case("greedy_prompt_once_upon_a_time");
        var request = new GenerateRequest { MaxTokens = 20, Temperature = 0 };
        request.PromptTokenIds.AddRange(c.PromptIds);
        var (ids, _, _, _) = await Collect(f.Client, request);
        Assert.Equal(c.SampledIds[..20], ids);
    }

    [Fact]
    public async Task Steering_by_hook_name_and_by_layer_and_site_are_the_same_request()
    {
        var direction = Numerics.RandomVector(new Random(3), 64);
        GenerateRequest Request(Action<SteeringTerm> site)
        {
            var term = new SteeringTerm { Operation = SteeringOperation.Add, Value = 5f, Vector = new FeatureVector() };
            term.Vector.Direction.AddRange(direction);
            site(term);
            var r = new GenerateRequest { MaxTokens = 16, Temperature = 0, Steering = new SteeringSpec() };
            r.Steering.Terms.Add(term);
            return r;
        }
        var byHook = await Collect(f.Client, Request(t => t.Hook = "blocks.2.hook_resid_post"));
        var byLayer = await Collect(f.Client, Request(t => { t.Layer = 2; t.Site = SiteKind.ResidPost; }));
        var byResidPre = await Collect(f.Client, Request(t => t.Hook = "blocks.3.hook_resid_pre"));
        var unsteered = await Collect(f.Client, new GenerateRequest { MaxTokens = 16, Temperature = 0 });
        Assert.Equal(byHook.Ids, byLayer.Ids);
        Assert.Equal(byHook.Ids, byResidPre.Ids);
        Assert.NotEqual(unsteered.Ids, byHook.Ids);
    }

    private static SteeringTerm GoodTerm()
    {
        var term = new SteeringTerm { Hook = "blocks.1.hook_mlp_out", Operation = SteeringOperation.Rescale, Value = 0f, Vector = new FeatureVector() };
        term.Vector.Direction.AddRange(Enumerable.Repeat(0.1f, 64));
        term.Vector.Encoder.AddRange(Enumerable.Repeat(0.1f, 64));
        return term;
    }

    private static readonly Dictionary<string, (Action<GenerateRequest> Break, string Field)> BadInputs = new()
    {
        ["max_tokens 0"] = (r => r.MaxTokens = 0, "max_tokens"),
        ["max_tokens negative"] = (r => r.MaxTokens = -5, "max_tokens"),
        ["max_tokens past the context"] = (r => r.MaxTokens = 600, "max_tokens"),
        ["temperature negative"] = (r => r.Temperature = -0.5f, "temperature"),
        ["temperature NaN"] = (r => r.Temperature = float.NaN, "temperature"),
        ["top_p 0"] = (r => r.TopP = 0f, "top_p"),
        ["top_p above 1"] = (r => r.TopP = 1.5f, "top_p"),
        ["top_p NaN"] = (r => r.TopP = float.NaN, "top_p"),
        ["top_k negative"] = (r => r.TopK = -1, "top_k"),
        ["token id out of range"] = (r => { r.Prompt = ""; r.PromptTokenIds.Add(1); r.PromptTokenIds.Add(512); }, "prompt_token_ids"),
        ["prompt and ids together"] = (r => r.PromptTokenIds.Add(1), "prompt_token_ids"),
        ["empty stop string"] = (r => r.Stop.Add(""), "stop[0]"),
        ["direction of the wrong length"] = (r => r.Steering.Terms[0].Vector.Direction.RemoveAt(0), "steering.terms[0].direction"),
        ["encoder of the wrong length"] = (r => r.Steering.Terms[0].Vector.Encoder.Add(1f), "steering.terms[0].encoder"),
        ["NaN in direction"] = (r => r.Steering.Terms[0].Vector.Direction[5] = float.NaN, "steering.terms[0].direction"),
        ["infinity in encoder"] = (r => r.Steering.Terms[0].Vector.Encoder[0] = float.PositiveInfinity, "steering.terms[0].encoder"),
        ["NaN value"] = (r => r.Steering.Terms[0].Value = float.NaN, "steering.terms[0].value"),
        ["value × direction overflows"] = (r => { r.Steering.Terms[0].Operation = SteeringOperation.Add; r.Steering.Terms[0].Value = 1e38f; }, "steering.terms[0].value"),
        ["add terms overflow together"] = (r =>
        {
            var t = r.Steering.Terms[0];
            (t.Operation, t.Value) = (SteeringOperation.Add, 2e19f); // each 2e19 × 0.1 = 2e18 is in range; their sum is not
            r.Steering.Terms.Add(t.Clone());
        }, "steering.terms[0]"),
        ["infinite encoder bias"] = (r => r.Steering.Terms[0].Vector.EncoderBias = float.NegativeInfinity, "steering.terms[0].encoder_bias"),
        ["NaN threshold"] = (r => r.Steering.Terms[0].Vector.Threshold = float.NaN, "steering.terms[0].threshold"),
        ["unknown layer"] = (r => { r.Steering.Terms[0].Hook = ""; r.Steering.Terms[0].Layer = 7; r.Steering.Terms[0].Site = SiteKind.AttnOut; }, "steering.terms[0].layer"),
        ["unknown layer in hook name"] = (r => r.Steering.Terms[0].Hook = "blocks.9.hook_mlp_out", "steering.terms[0].hook"),
        ["unknown site in hook name"] = (r => r.Steering.Terms[0].Hook = "blocks.1.hook_resid_mid", "steering.terms[0].hook"),
        ["no site"] = (r => r.Steering.Terms[0].Hook = "", "steering.terms[0].site"),
        ["unknown site enum"] = (r => { r.Steering.Terms[0].Hook = ""; r.Steering.Terms[0].Site = (SiteKind)42; }, "steering.terms[0].site"),
        ["no operation"] = (r => r.Steering.Terms[0].Operation = SteeringOperation.Unspecified, "steering.terms[0].operation"),
        ["rescale without encoder"] = (r => r.Steering.Terms[0].Vector.Encoder.Clear(), "steering.terms[0].encoder"),
        ["no feature"] = (r => r.Steering.Terms[0].ClearFeature(), "steering.terms[0].vector"),
    };

    public static TheoryData<string> BadInputCases() => new(BadInputs.Keys);

    [Theory]
    [MemberData(nameof(BadInputCases))]
    public async Task Bad_input_gets_invalid_argument_naming_the_field_and_the_server_keeps_serving(string name)
    {
        var request = new GenerateRequest { Prompt = "Once upon a time", MaxTokens = 8, Temperature = 0, Steering = new SteeringSpec() };
        request.Steering.Terms.Add(GoodTerm());
        var (breakIt, field) = BadInputs[name];
        breakIt(request);

        var e = await Assert.ThrowsAsync<RpcException>(() => Collect(f.Client, request));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.StartsWith(field + ":", e.Status.Detail);

        var ok = await Collect(f.Client, new GenerateRequest { Prompt = "Once upon a time", MaxTokens = 4, Temperature = 0 });
        Assert.Equal(RunCReference.Case("greedy_prompt_once_upon_a_time").SampledIds[..4], ok.Ids);
    }

    [Fact]
    public async Task A_client_that_cancels_mid_stream_stops_the_engine_within_a_few_steps()
    {
        var engine = f.Host.Engine;
        var finished = new TaskCompletionSource<GenerationRecord>(TaskCreationOptions.RunContinuationsAsynchronously);
        var tokens = 0;
        using var cancelled = new ManualResetEventSlim();
        void OnToken(long id, int count)
        {
            Volatile.Write(ref tokens, count);
            // The engine waits after its fourth token until the client has cancelled, then goes on at 20 ms a token:
            // the cancellation crosses HTTP/2 to the server within the 25 tokens allowed even on a busy machine.
            if (count >= 4) cancelled.Wait(TimeSpan.FromSeconds(10));
            Thread.Sleep(20);
        }
        void OnFinished(GenerationRecord r) => finished.TrySetResult(r);
        engine.TokenGenerated += OnToken;
        engine.GenerationFinished += OnFinished;
        try
        {
            using var cts = new CancellationTokenSource();
            using var call = f.Client.Generate(new GenerateRequest { MaxTokens = 500, Temperature = 0 }, cancellationToken: cts.Token);
            var received = 0;
            var atCancel = 0;
            var e = await Assert.ThrowsAsync<RpcException>(async () =>
            {
                await foreach (var _ in call.ResponseStream.ReadAllAsync(cts.Token))
                    if (++received == 3)
                    {
                        atCancel = Volatile.Read(ref tokens);
                        cts.Cancel();
                        cancelled.Set();
                    }
            });
            Assert.Equal(StatusCode.Cancelled, e.StatusCode);

            var record = await finished.Task.WaitAsync(TimeSpan.FromSeconds(10));
            Assert.Equal(Engine.FinishReason.Cancelled, record.Finish);
            Assert.True(record.CompletionTokens - atCancel <= 25,
                $"the engine generated {record.CompletionTokens - atCancel} tokens after the client cancelled (at {atCancel})");
        }
        finally
        {
            cancelled.Set();
            engine.TokenGenerated -= OnToken;
            engine.GenerationFinished -= OnFinished;
        }
        Assert.Equal(0, engine.ActiveGenerations);
    }

    [Fact]
    public async Task Model_info_describes_the_loaded_model_and_its_provider()
    {
        var info = await f.Client.GetModelInfoAsync(new GetModelInfoRequest());
        Assert.Equal("stories260k", info.Name);
        Assert.Equal((5, 64, 512, 512, 8, 4), (info.Layers, info.DModel, info.VocabSize, info.ContextLength, info.Heads, info.KvHeads));
        Assert.Equal(15, info.Sites.Count);
        Assert.Equal("blocks.0.hook_attn_out", info.Sites[0]);
        Assert.Equal("blocks.4.hook_resid_post", info.Sites[14]);
        Assert.Equal("CPUExecutionProvider", info.ExecutionProvider);
        Assert.Equal(8, info.SlotsPerSite);
    }

    [Fact]
    public async Task Health_reports_serving()
    {
        var health = new Grpc.Health.V1.Health.HealthClient(f.Channel);
        var reply = await health.CheckAsync(new Grpc.Health.V1.HealthCheckRequest());
        Assert.Equal(Grpc.Health.V1.HealthCheckResponse.Types.ServingStatus.Serving, reply.Status);
    }

    [Fact]
    public async Task Reflection_lists_the_inference_service()
    {
        var reflection = new Grpc.Reflection.V1Alpha.ServerReflection.ServerReflectionClient(f.Channel);
        using var call = reflection.ServerReflectionInfo();
        await call.RequestStream.WriteAsync(new Grpc.Reflection.V1Alpha.ServerReflectionRequest { ListServices = "" });
        await call.RequestStream.CompleteAsync();
        Assert.True(await call.ResponseStream.MoveNext(CancellationToken.None));
        var services = call.ResponseStream.Current.ListServicesResponse.Service.Select(s => s.Name).ToArray();
        Assert.Contains("featureflow.v1.Inference", services);
        Assert.Contains("grpc.health.v1.Health", services);
    }
}
