using FeatureFlow.Api.V1;
using FeatureFlow.Engine;
using FeatureFlow.Models;
using FeatureFlow.Models.Folder;
using FeatureFlow.Models.Llama2c;
using FeatureFlow.Sae;
using FeatureFlow.Steering;
using Grpc.Core;

namespace FeatureFlow.Server.Tests;

/// <summary>Compare (A/B arms in one call) and feature read-out streamed with tokens.</summary>
public class CompareTests(ServerFixture f) : IClassFixture<ServerFixture>
{
    private const string Prompt = "Once upon a time";
    private const ulong Seed = 23;

    private static Api.V1.SteeringSpec Pack(string name, float strength)
    {
        var spec = new Api.V1.SteeringSpec();
        spec.Terms.Add(new Api.V1.SteeringTerm { Pack = new PackRef { Name = name, Strength = strength } });
        return spec;
    }

    private static CompareRequest Request(params Api.V1.SteeringSpec[] arms)
    {
        var r = new CompareRequest { Prompt = Prompt, MaxTokens = 48, Temperature = 1, TopP = 0.9f, Seed = Seed };
        r.Arms.AddRange(arms);
        return r;
    }

    private sealed record Arm(List<int> Ids, List<float> LogProbs, List<TokenFeatures> Features, string Text);

    private async Task<(Arm[] Arms, List<ArmSummary> Summaries)> RunCompare(CompareRequest request)
    {
        using var call = f.Client.Compare(request);
        var arms = new Dictionary<int, Arm>();
        var summaries = new List<ArmSummary>();
        var text = new Dictionary<int, System.Text.StringBuilder>();
        await foreach (var m in call.ResponseStream.ReadAllAsync())
        {
            if (m.Summary is { } s)
            {
                summaries.Add(s);
                continue;
            }
            if (!arms.TryGetValue(m.Arm, out var arm)) arms[m.Arm] = arm = new Arm([], [], [], "");
            arm.Ids.AddRange(m.Update.TokenIds);
            arm.LogProbs.AddRange(m.Update.TokenLogprobs);
            arm.Features.AddRange(m.Update.TokenFeatures);
        }
        Assert.True(summaries.Count == arms.Count, "one summary per arm after the arms' tokens");
        return (arms.OrderBy(a => a.Key).Select(a => a.Value).ToArray(), summaries);
    }

    private async Task<(List<int> Ids, List<float> LogProbs, List<TokenFeatures> Features)> RunGenerate(Api.V1.SteeringSpec? steering, FeatureReadout? readout = null)
    {
        var r = new GenerateRequest { Prompt = Prompt, MaxTokens = 48, Temperature = 1, TopP = 0.9f, Seed = Seed, Steering = steering, Readout = readout };
        using var call = f.Client.Generate(r);
        var ids = new List<int>();
        var logProbs = new List<float>();
        var features = new List<TokenFeatures>();
        await foreach (var m in call.ResponseStream.ReadAllAsync())
        {
            ids.AddRange(m.TokenIds);
            logProbs.AddRange(m.TokenLogprobs);
            features.AddRange(m.TokenFeatures);
        }
        return (ids, logProbs, features);
    }

    [Fact]
    public async Task Three_arms_stream_side_by_side_and_each_equals_its_own_generate()
    {
        Api.V1.SteeringSpec[] specs = [new(), Pack("happy", 1f), Pack("happy", 4f)];
        var (arms, summaries) = await RunCompare(Request(specs));
        Assert.Equal(3, arms.Length);
        for (var i = 0; i < specs.Length; i++)
        {
            var alone = await RunGenerate(specs[i].Terms.Count == 0 ? null : specs[i]);
            Assert.Equal(alone.Ids, arms[i].Ids);
            Assert.Equal(alone.LogProbs, arms[i].LogProbs);
        }
        Assert.NotEqual(arms[0].Ids, arms[2].Ids);
        Assert.Equal(["default", "arms[1]", "arms[2]"], summaries.Select(s => s.Label));
        Assert.All(summaries, s => Assert.Equal(Seed, s.Seed));
        for (var i = 0; i < 3; i++)
        {
            Assert.Equal(arms[i].Ids.Count, summaries[i].CompletionTokens);
            Assert.Equal(arms[i].LogProbs.Average(p => (double)p), summaries[i].MeanLogprob, 1e-9);
        }
    }

    [Fact]
    public async Task The_summary_perplexity_equals_an_independent_recomputation_under_the_unsteered_model()
    {
        var (arms, summaries) = await RunCompare(Request(new Api.V1.SteeringSpec(), Pack("happy", 2f)));
        var folder = ModelFolder.Open(RepoPaths.Stories260kModel);
        var prompt = f.Host.Engine.EncodePrompt(Prompt);
        for (var i = 0; i < arms.Length; i++)
        {
            // The C# reference forward pass (no ONNX Runtime), unsteered, over prompt + the arm's tokens.
            var model = new ReferenceTransformer(Llama2cCheckpoint.Read(Path.Combine(folder.Directory, folder.Manifest.Provenance.Checkpoint.File)));
            int[] sequence = [.. prompt, .. arms[i].Ids];
            double nll = 0;
            for (var p = 0; p < sequence.Length - 1; p++)
            {
                var logits = model.Forward(sequence[p], p);
                if (p < prompt.Length - 1) continue;
                var max = logits.Max();
                var logSum = Math.Log(logits.Sum(v => Math.Exp(v - max))) + max;
                nll -= logits[sequence[p + 1]] - logSum;
            }
            var expected = Math.Exp(nll / arms[i].Ids.Count);
            Assert.True(Math.Abs(summaries[i].PerplexityUnsteered - expected) <= 1e-4 * expected,
                $"arm {i}: perplexity {summaries[i].PerplexityUnsteered} vs reference {expected}");
        }
        Assert.True(summaries[1].PerplexityUnsteered > summaries[0].PerplexityUnsteered, "steering away from the model should cost coherence");
    }

    [Fact]
    public async Task A_sweep_expands_into_arms_and_strength_0_is_the_default_arm()
    {
        var request = Request(new Api.V1.SteeringSpec());
        request.Sweep = new StrengthSweep { Pack = new PackRef { Name = "bird" } };
        request.Sweep.Strengths.AddRange([0f, 1f, 3f]);
        var (arms, summaries) = await RunCompare(request);
        Assert.Equal(["default", "pack bird @ 0", "pack bird @ 1", "pack bird @ 3"], summaries.Select(s => s.Label));
        Assert.Equal(arms[0].Ids, arms[1].Ids);
        Assert.Equal((await RunGenerate(Pack("bird", 3f))).Ids, arms[3].Ids);
    }

    [Fact]
    public async Task Streamed_feature_activations_equal_an_offline_sae_encoding_of_the_same_generation()
    {
        const string hook = "blocks.2.hook_resid_post";
        var readout = new FeatureReadout { TopK = 5 };
        readout.Hooks.Add(hook);
        readout.Features.Add(new FeatureRef { Hook = hook, Index = 415 });
        readout.Features.Add(new FeatureRef { Hook = "blocks.3.hook_mlp_out", Index = 7 });
        var (ids, _, features) = await RunGenerate(Pack("happy", 1f), readout);
        Assert.Equal(ids.Count, features.Count);

        // Offline: the collector's read-out (the plain-operator hooked graph's site outputs) with the same steering.
        var engine = f.Host.Engine;
        var catalog = Steering.Packs.SteeringCatalog.Load(engine.Folder);
        var plan = engine.Compiler.Compile(new Steering.SteeringSpec(catalog.Packs.Get("happy", "pack").At(1f, Steering.SteeringScope.All, "pack").ToArray()));
        using var decoder = new HookedDecoder(engine.Folder.HookedGraphPath, engine.Architecture, new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu });
        using var state = decoder.NewState();
        using var steering = decoder.Bind(plan.Prompt);
        var prompt = engine.EncodePrompt(Prompt);
        int[] sequence = [.. prompt, .. ids];
        Site[] sites = [Site.Parse(hook), Site.Parse("blocks.3.hook_mlp_out")];
        var output = decoder.Run(state, sequence[..^1], steering, sites);
        var saes = sites.Select(s => catalog.Saes.Get(s, "test")).ToArray();
        var d = engine.Architecture.DModel;
        for (var k = 0; k < ids.Count; k++)
        {
            var position = prompt.Length - 1 + k;
            var z = saes.Select((sae, i) =>
            {
                var values = new float[sae.DSae];
                sae.Encode(output.Sites[i].AsSpan(position * d, d), values, new float[d]);
                return values;
            }).ToArray();
            var streamed = features[k].Sites.ToDictionary(s => s.Hook);
            Assert.Equal(z[0][415], streamed[hook].FeatureValues[0], 1e-3);
            Assert.Equal(z[1][7], streamed["blocks.3.hook_mlp_out"].FeatureValues[0], 1e-3);
            Assert.Empty(streamed["blocks.3.hook_mlp_out"].TopIndices);
            for (var j = 0; j < streamed[hook].TopIndices.Count; j++)
                Assert.Equal(z[0][streamed[hook].TopIndices[j]], streamed[hook].TopValues[j], 1e-3);
            var clearlyTop = z[0].Select((v, i) => (v, i)).OrderByDescending(x => x.v).Take(5).Where(x => x.v > 1e-2).ToArray();
            var fifth = clearlyTop.Length == 5 ? clearlyTop[4].v : 0f;
            foreach (var (v, i) in clearlyTop.Where(x => x.v > fifth + 1e-3))
                Assert.Contains(i, streamed[hook].TopIndices);
        }
    }

    [Fact]
    public async Task Watched_features_are_averaged_over_each_arm_s_tokens()
    {
        const string hook = "blocks.2.hook_resid_post";
        var request = Request(new Api.V1.SteeringSpec(), Pack("happy", 2f));
        request.Watch.Add(new FeatureRef { Hook = hook, Index = 415 });
        request.Readout = new FeatureReadout();
        request.Readout.Features.Add(new FeatureRef { Hook = hook, Index = 415 });
        var (arms, summaries) = await RunCompare(request);
        for (var i = 0; i < arms.Length; i++)
        {
            var streamed = arms[i].Features.Average(t => (double)t.Sites.Single().FeatureValues[0]);
            Assert.Equal(streamed, summaries[i].Watched.Single().MeanActivation, 1e-6);
        }
    }

    private static readonly Dictionary<string, (Action<CompareRequest> Break, StatusCode Code, string Field)> BadInputs = new()
    {
        ["no arms"] = (r => r.Arms.Clear(), StatusCode.InvalidArgument, "arms"),
        ["too many arms"] = (r => r.Arms.AddRange(Enumerable.Range(0, 8).Select(_ => new Api.V1.SteeringSpec())), StatusCode.InvalidArgument, "arms"),
        ["empty sweep"] = (r => r.Sweep = new StrengthSweep { Pack = new PackRef { Name = "happy" } }, StatusCode.InvalidArgument, "sweep.strengths"),
        ["non-finite strength"] = (r => { r.Sweep = new StrengthSweep { Pack = new PackRef { Name = "happy" } }; r.Sweep.Strengths.Add(float.NaN); }, StatusCode.InvalidArgument, "sweep.strengths[0]"),
        ["sweep without target"] = (r => r.Sweep = new StrengthSweep { Strengths = { 1f } }, StatusCode.InvalidArgument, "sweep.pack"),
        ["read-out site without an SAE"] = (r => { r.Readout = new FeatureReadout(); r.Readout.Hooks.Add("blocks.9.hook_mlp_out"); }, StatusCode.InvalidArgument, "readout.hooks[0]"),
        ["top_k over the SAE width"] = (r => { r.Readout = new FeatureReadout { TopK = 513 }; r.Readout.Hooks.Add("blocks.1.hook_mlp_out"); }, StatusCode.InvalidArgument, "readout.top_k"),
        ["watched feature out of range"] = (r => r.Watch.Add(new FeatureRef { Hook = "blocks.1.hook_mlp_out", Index = 512 }), StatusCode.InvalidArgument, "watch[0].index"),
        ["bad arm term"] = (r => r.Arms.Add(Pack("happy", float.PositiveInfinity)), StatusCode.InvalidArgument, "arms[1].terms[0].pack.strength"),
        ["unknown pack in an arm"] = (r => r.Arms.Add(Pack("no-such-pack", 1f)), StatusCode.NotFound, "arms[1].terms[0].pack.name"),
        ["pack name with a path separator"] = (r => r.Arms.Add(Pack("packs/happy", 1f)), StatusCode.InvalidArgument, "arms[1].terms[0].pack.name"),
    };

    public static TheoryData<string> BadInputCases() => new(BadInputs.Keys);

    [Theory]
    [MemberData(nameof(BadInputCases))]
    public async Task Bad_compare_requests_name_the_field_and_other_rows_are_unaffected(string name)
    {
        var bystander = RunGenerate(Pack("happy", 1f));
        var request = Request(new Api.V1.SteeringSpec());
        var (breakIt, code, field) = BadInputs[name];
        breakIt(request);
        var e = await Assert.ThrowsAsync<RpcException>(() => RunCompare(request));
        Assert.Equal(code, e.StatusCode);
        Assert.StartsWith(field + ":", e.Status.Detail);
        Assert.Equal((await RunGenerate(Pack("happy", 1f))).Ids, (await bystander).Ids);
    }
}
