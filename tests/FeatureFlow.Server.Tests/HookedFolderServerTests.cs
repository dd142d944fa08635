using System.Text.Json;
using FeatureFlow.Api.V1;
using FeatureFlow.Engine;
using FeatureFlow.Models.Hooking;
using Grpc.Core;
using Grpc.Net.Client;
using FinishReason = FeatureFlow.Api.V1.FinishReason;

namespace FeatureFlow.Server.Tests;

/// <summary>onnxruntime-genai's fused GPT-2 test model, hooked by <c>featureflow hook</c> into a temporary folder and served.</summary>
public sealed class HookedFolderServerFixture : IAsyncLifetime
{
    private readonly string _root = Directory.CreateTempSubdirectory("featureflow-hooked-server-").FullName;

    public ServerHost Host { get; private set; } = null!;
    public GrpcChannel Channel { get; private set; } = null!;
    public Inference.InferenceClient Client => new(Channel);

    public async Task InitializeAsync()
    {
        var folder = Path.Combine(_root, "tiny-gpt2-hooked");
        HookedFolderWriter.Write(new HookRequest { InputGraph = Path.Combine(RepoPaths.GenAiTinyGpt2, "past.onnx"), OutputDirectory = folder });
        Host = ServerHost.Create(new ServerOptions
        {
            ModelDirectory = folder, Port = 0, Engine = new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu },
        });
        await Host.StartAsync();
        Channel = GrpcChannel.ForAddress(Host.Address);
    }

    public async Task DisposeAsync()
    {
        Channel.Dispose();
        await Host.DisposeAsync();
        Directory.Delete(_root, true);
    }
}

public sealed class HookedFolderServerTests(HookedFolderServerFixture f) : IClassFixture<HookedFolderServerFixture>
{
    private static (int[][] Prompts, int[][] Expected, int MaxLength) Greedy()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(RepoPaths.GenAiTinyGpt2, "expected.json")));
        var greedy = doc.RootElement.GetProperty("greedy");
        int[][] Rows(string name) => greedy.GetProperty(name).EnumerateArray().Select(r => r.EnumerateArray().Select(e => e.GetInt32()).ToArray()).ToArray();
        return (Rows("input_ids"), Rows("expected_sequences"), greedy.GetProperty("max_length").GetInt32());
    }

    [Fact]
    public async Task Generate_with_prompt_token_ids_streams_onnxruntime_genai_expected_greedy_tokens()
    {
        var (prompts, expected, maxLength) = Greedy();
        for (var row = 0; row < prompts.Length; row++)
        {
            var request = new GenerateRequest { MaxTokens = maxLength - prompts[row].Length, Temperature = 0f };
            request.PromptTokenIds.AddRange(prompts[row]);
            var tokens = await f.Client.TokensAsync(request);
            Assert.Equal(expected[row][prompts[row].Length..], tokens);
        }
    }

    [Fact]
    public async Task A_steering_term_at_a_mid_layer_site_is_accepted_and_moves_the_log_probabilities()
    {
        var (prompts, _, _) = Greedy();
        var direction = Numerics.RandomVector(new Random(4), f.Host.Engine.Architecture.DModel, 2f);
        var steered = new GenerateRequest { MaxTokens = 6, Temperature = 0f, Steering = new SteeringSpec() };
        steered.PromptTokenIds.AddRange(prompts[1]);
        steered.Steering.Terms.Add(new SteeringTerm
        {
            Hook = "blocks.2.hook_resid_post", Operation = SteeringOperation.Add, Value = 1.5f,
            Vector = new FeatureVector { Direction = { direction } },
        });
        var plain = steered.Clone();
        plain.Steering = null;
        var (steeredIds, steeredLogProbs, finish) = await Stream(steered);
        var (_, plainLogProbs, _) = await Stream(plain);
        Assert.Equal(6, steeredIds.Count);
        Assert.Equal(FinishReason.Length, finish);
        Assert.True(steeredLogProbs.Zip(plainLogProbs, (a, b) => Math.Abs(a - b)).Max() > 1e-2, "steering changed nothing");
    }

    private async Task<(List<int> Ids, List<float> LogProbs, FinishReason Finish)> Stream(GenerateRequest request)
    {
        using var call = f.Client.Generate(request);
        var (ids, logProbs, finish) = (new List<int>(), new List<float>(), FinishReason.Unspecified);
        await foreach (var r in call.ResponseStream.ReadAllAsync())
        {
            ids.AddRange(r.TokenIds);
            logProbs.AddRange(r.TokenLogprobs);
            if (r.FinishReason != FinishReason.Unspecified) finish = r.FinishReason;
        }
        return (ids, logProbs, finish);
    }
}
