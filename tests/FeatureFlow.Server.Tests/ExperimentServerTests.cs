using FeatureFlow.Api.V1;
using FeatureFlow.Engine;
using Grpc.Core;
using Grpc.Net.Client;

namespace FeatureFlow.Server.Tests;

/// <summary>A server on the shipped model with an experiments config and a figures database in a temp folder.</summary>
public sealed class ExperimentFixture : IAsyncLifetime
{
    public const string Config = """
        experiments:
          - name: happy-strength
            salt: s1
            control: off
            arms:
              - name: off
                weight: 1
                steering: {}
              - name: half
                weight: 1
                steering: {"terms": [{"pack": {"name": "happy", "strength": 0.5}}]}
        """;

    public string Folder { get; } = Directory.CreateTempSubdirectory("featureflow-experiments-").FullName;
    public string ConfigPath => Path.Combine(Folder, "experiments.yaml");
    public string Database => Path.Combine(Folder, "figures.db");
    public ServerHost Host { get; private set; } = null!;
    public GrpcChannel Channel { get; private set; } = null!;
    public Inference.InferenceClient Client => new(Channel);

    public ServerOptions Options => new()
    {
        ModelDirectory = RepoPaths.Stories260kModel,
        Port = 0,
        ExperimentsConfig = ConfigPath,
        ExperimentsDatabase = Database,
        Engine = new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu },
    };

    public async Task InitializeAsync()
    {
        await File.WriteAllTextAsync(ConfigPath, Config);
        Host = ServerHost.Create(Options);
        await Host.StartAsync();
        Channel = GrpcChannel.ForAddress(Host.Address);
    }

    public async Task DisposeAsync()
    {
        Channel.Dispose();
        await Host.DisposeAsync();
        Directory.Delete(Folder, recursive: true);
    }
}

public class ExperimentServerTests(ExperimentFixture f) : IClassFixture<ExperimentFixture>
{
    private static GenerateRequest InExperiment(string subject, string experiment = "happy-strength", int maxTokens = 30,
        Api.V1.SteeringSpec? steering = null) =>
        new() { Prompt = "Once upon a time", MaxTokens = maxTokens, Temperature = 1, Seed = 9, Experiment = experiment, SubjectId = subject, Steering = steering };

    private static async Task<(List<int> Ids, GenerateResponse First)> Run(Inference.InferenceClient client, GenerateRequest request)
    {
        using var call = client.Generate(request);
        var ids = new List<int>();
        GenerateResponse? first = null;
        await foreach (var r in call.ResponseStream.ReadAllAsync())
        {
            first ??= r;
            ids.AddRange(r.TokenIds);
        }
        return (ids, first!);
    }

    /// <summary>The first subject ids (user-0, user-1, …) that the experiment puts in each arm.</summary>
    private async Task<Dictionary<string, string>> SubjectPerArm()
    {
        var found = new Dictionary<string, string>();
        for (var i = 0; found.Count < 2 && i < 64; i++)
        {
            var (_, first) = await Run(f.Client, InExperiment($"user-{i}", maxTokens: 1));
            found.TryAdd(first.ExperimentArm, $"user-{i}");
        }
        Assert.Equal(2, found.Count);
        return found;
    }

    [Fact]
    public async Task A_subject_always_gets_its_arm_and_the_arm_s_steering()
    {
        var subjects = await SubjectPerArm();
        foreach (var (arm, subject) in subjects)
        {
            var runs = new[] { await Run(f.Client, InExperiment(subject)), await Run(f.Client, InExperiment(subject)) };
            Assert.All(runs, r => Assert.Equal(arm, r.First.ExperimentArm));
            Assert.NotEqual(runs[0].First.RequestId, runs[1].First.RequestId);
            var direct = new GenerateRequest { Prompt = "Once upon a time", MaxTokens = 30, Temperature = 1, Seed = 9 };
            if (arm == "half") direct.Steering = new Api.V1.SteeringSpec { Terms = { new Api.V1.SteeringTerm { Pack = new PackRef { Name = "happy", Strength = 0.5f } } } };
            Assert.Equal((await Run(f.Client, direct)).Ids, runs[0].Ids);
        }
    }

    [Fact]
    public async Task Outcomes_by_subject_and_by_request_give_per_arm_figures_that_survive_a_restart()
    {
        var subjects = await SubjectPerArm();
        var before = await f.Client.GetExperimentAsync(new GetExperimentRequest { Name = "happy-strength" });
        var (_, first) = await Run(f.Client, InExperiment(subjects["half"]));
        Assert.Equal("half", (await f.Client.RecordOutcomeAsync(new RecordOutcomeRequest { Experiment = "happy-strength", RequestId = first.RequestId, Name = "score", Value = 4 })).Arm);
        foreach (var v in new[] { 2.0, 3.0 })
            await f.Client.RecordOutcomeAsync(new RecordOutcomeRequest { Experiment = "happy-strength", SubjectId = subjects["half"], Name = "score", Value = v });
        foreach (var v in new[] { 1.0, 2.0, 2.0 })
            await f.Client.RecordOutcomeAsync(new RecordOutcomeRequest { Experiment = "happy-strength", SubjectId = subjects["off"], Name = "score", Value = v });

        var info = await f.Client.GetExperimentAsync(new GetExperimentRequest { Name = "happy-strength" });
        var half = info.Arms.Single(a => a.Name == "half");
        var off = info.Arms.Single(a => a.Name == "off");
        Assert.Equal(before.Arms.Single(a => a.Name == "half").Requests + 1, half.Requests);
        Assert.True(half.Tokens > 0 && half.MeanLatencyMs > 0);
        var score = half.Outcomes.Single(o => o.Name == "score");
        // Hand-computed: half {4, 2, 3}: mean 3, sd 1, t(0.975, 2) = 4.303 → 3 ± 4.303/√3 = 3 ± 2.484.
        Assert.Equal((3L, 3.0), (score.N, score.Mean));
        Assert.Equal(3 - 2.484, score.CiLow, 2);
        Assert.Equal(3 + 2.484, score.CiHigh, 2);
        // Against off {1, 2, 2} (mean 5/3): difference 4/3, the control arm has none.
        Assert.True(score.HasDifference);
        Assert.Equal(4.0 / 3, score.Difference, 9);
        Assert.InRange(score.PValue, 0.0, 1.0);
        Assert.False(off.Outcomes.Single(o => o.Name == "score").HasDifference);

        // A second server on the same database reports the same figures.
        await using var restarted = ServerHost.Create(f.Options);
        await restarted.StartAsync();
        using var channel = GrpcChannel.ForAddress(restarted.Address);
        var again = await new Inference.InferenceClient(channel).GetExperimentAsync(new GetExperimentRequest { Name = "happy-strength" });
        Assert.Equal(info.Arms.Select(a => (a.Name, a.Requests, a.Tokens)), again.Arms.Select(a => (a.Name, a.Requests, a.Tokens)));
        Assert.Equal(score.Mean, again.Arms.Single(a => a.Name == "half").Outcomes.Single(o => o.Name == "score").Mean);
    }

    [Fact]
    public async Task A_changed_config_applies_to_new_requests_and_an_invalid_one_is_rejected_while_the_old_one_serves()
    {
        var version = (await f.Client.ListExperimentsAsync(new ListExperimentsRequest())).ConfigVersion;
        try
        {
            // An arm that names a pack the server does not have: refused, the old config keeps serving.
            await File.WriteAllTextAsync(f.ConfigPath, ExperimentFixture.Config.Replace("\"happy\"", "\"no-such-pack\""));
            await Task.Delay(1500); // the registry polls once a second; a refused config never bumps the version
            var listed = await f.Client.ListExperimentsAsync(new ListExperimentsRequest());
            Assert.Equal(version, listed.ConfigVersion);
            Assert.Contains("happy", listed.Experiments.Single().Arms.Single(a => a.Name == "half").SteeringJson);

            // A valid change (a new salt and a heavy third arm) applies to new requests.
            const string third = """

                      - name: double
                        weight: 1000
                        steering: {"terms": [{"pack": {"name": "happy", "strength": 2}}]}
                """;
            await File.WriteAllTextAsync(f.ConfigPath, ExperimentFixture.Config.Replace("salt: s1", "salt: s2") + third);
            for (var i = 0; i < 200 && (await f.Client.ListExperimentsAsync(new ListExperimentsRequest())).ConfigVersion == version; i++)
                await Task.Delay(25);
            Assert.True((await f.Client.ListExperimentsAsync(new ListExperimentsRequest())).ConfigVersion > version, "the new config was not applied");
            var arms = new List<string>();
            for (var i = 0; i < 5; i++) arms.Add((await Run(f.Client, InExperiment($"user-{i}", maxTokens: 1))).First.ExperimentArm);
            Assert.Contains("double", arms);
        }
        finally
        {
            await File.WriteAllTextAsync(f.ConfigPath, ExperimentFixture.Config);
            for (var i = 0; i < 200 && (await f.Client.ListExperimentsAsync(new ListExperimentsRequest())).Experiments.Single().Salt != "s1"; i++)
                await Task.Delay(25);
        }
    }

    private static readonly Dictionary<string, (Func<Inference.InferenceClient, Task> Call, StatusCode Code, string Field)> BadInputs = new()
    {
        ["unknown experiment"] = (c => Run(c, InExperiment("u", "nope")), StatusCode.NotFound, "experiment"),
        ["no subject"] = (c => Run(c, InExperiment("")), StatusCode.InvalidArgument, "subject_id"),
        ["steering and an experiment"] = (c => Run(c, InExperiment("u", steering: new Api.V1.SteeringSpec { Terms = { new Api.V1.SteeringTerm { Pack = new PackRef { Name = "happy" } } } })),
            StatusCode.InvalidArgument, "steering"),
        ["outcome for an unknown request"] = (c => c.RecordOutcomeAsync(new RecordOutcomeRequest { Experiment = "happy-strength", RequestId = "nope", Name = "x", Value = 1 }).ResponseAsync,
            StatusCode.NotFound, "request_id"),
        ["outcome that is not finite"] = (c => c.RecordOutcomeAsync(new RecordOutcomeRequest { Experiment = "happy-strength", SubjectId = "u", Name = "x", Value = double.NaN }).ResponseAsync,
            StatusCode.InvalidArgument, "value"),
        ["outcome without a name"] = (c => c.RecordOutcomeAsync(new RecordOutcomeRequest { Experiment = "happy-strength", SubjectId = "u", Value = 1 }).ResponseAsync,
            StatusCode.InvalidArgument, "name"),
        ["unknown experiment by name"] = (c => c.GetExperimentAsync(new GetExperimentRequest { Name = "nope" }).ResponseAsync, StatusCode.NotFound, "name"),
    };

    public static TheoryData<string> BadInputCases() => new(BadInputs.Keys);

    [Theory]
    [MemberData(nameof(BadInputCases))]
    public async Task Bad_experiment_input_gets_a_status_naming_the_field(string name)
    {
        var (call, code, field) = BadInputs[name];
        var e = await Assert.ThrowsAsync<RpcException>(() => call(f.Client));
        Assert.Equal(code, e.StatusCode);
        Assert.StartsWith(field + ":", e.Status.Detail);
    }
}
