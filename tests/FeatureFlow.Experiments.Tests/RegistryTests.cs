using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using FeatureFlow.Experiments;

namespace FeatureFlow.Experiments.Tests;

public sealed class RegistryTests : IDisposable
{
    // Only a bound on how long to wait for the watcher or the 1 s poll; passing tests return as soon as it fires.
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("ff-registry-");
    private readonly ExperimentStore _store = ExperimentStore.Open(":memory:");
    private readonly ConcurrentQueue<string> _log = new();

    private string ConfigPath => Path.Combine(_dir.FullName, "experiments.yaml");

    public void Dispose()
    {
        _store.Dispose();
        _dir.Delete(recursive: true);
    }

    private static string Config(string weightB = "1", string extraArmKey = "", string experiment = "exp") => $"""
        experiments:
          - name: {experiment}
            salt: s
            arms:
              - {"{"}name: a, weight: 1{"}"}
              - {"{"}name: b, weight: {weightB}{extraArmKey}{"}"}
          - name: other
            salt: s
            traffic: 0.000001
            arms: [{"{"}name: x, weight: 1{"}"}, {"{"}name: y, weight: 1{"}"}]
        """;

    /// <summary>Replaces the file in one rename, so the registry never reads it half-written.</summary>
    private void Write(string text)
    {
        var staging = ConfigPath + ".tmp";
        File.WriteAllText(staging, text);
        File.Move(staging, ConfigPath, overwrite: true);
    }

    private ExperimentRegistry Open(Action<ExperimentConfig>? validate = null)
    {
        Write(Config());
        return new ExperimentRegistry(ConfigPath, _store, validate, _log.Enqueue);
    }

    private static void WaitUntil(Func<bool> condition, string what)
    {
        var deadline = DateTime.UtcNow + Patience;
        while (!condition())
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"gave up waiting for {what} after {Patience}");
            Thread.Sleep(20);
        }
    }

    [Fact]
    public void Loads_at_start_and_applies_a_changed_file()
    {
        using var registry = Open();
        Assert.Equal(1, registry.Version);
        Assert.Equal(1, registry.Current.Experiments["exp"].Arms[1].Weight);
        var reloaded = new ConcurrentQueue<ExperimentConfig>();
        registry.Reloaded += reloaded.Enqueue;

        Write(Config(weightB: "3"));
        WaitUntil(() => registry.Version >= 2, "the reload");
        Assert.Equal(2, registry.Version);
        Assert.Equal(3, registry.Current.Experiments["exp"].Arms[1].Weight);
        Assert.Same(registry.Current, Assert.Single(reloaded));
    }

    [Fact]
    public void Polling_sees_a_configmap_style_symlink_swap_that_the_watcher_cannot()
    {
        // Kubernetes mounts: experiments.yaml -> ..data/experiments.yaml, ..data -> v1; an update points ..data at
        // v2 with one rename, so no event ever names experiments.yaml.
        foreach (var (version, weight) in new[] { ("v1", "1"), ("v2", "4") })
        {
            Directory.CreateDirectory(Path.Combine(_dir.FullName, version));
            File.WriteAllText(Path.Combine(_dir.FullName, version, "experiments.yaml"), Config(weightB: weight));
        }
        var data = Path.Combine(_dir.FullName, "..data");
        Directory.CreateSymbolicLink(data, "v1");
        File.CreateSymbolicLink(ConfigPath, "..data/experiments.yaml");
        using var registry = new ExperimentRegistry(ConfigPath, _store, log: _log.Enqueue);
        Assert.Equal(1, registry.Current.Experiments["exp"].Arms[1].Weight);

        var staging = Path.Combine(_dir.FullName, "..data_tmp");
        Directory.CreateSymbolicLink(staging, "v2");
        // rename(2) directly: File.Move will not move a link to a directory, and the swap must be one atomic step.
        Assert.Equal(0, Rename(staging, data));
        WaitUntil(() => registry.Version >= 2, "the poll to notice the swap");
        Assert.Equal(4, registry.Current.Experiments["exp"].Arms[1].Weight);
    }

    [DllImport("libc", EntryPoint = "rename", SetLastError = true)]
    private static extern int Rename(string from, string to);

    public static TheoryData<string, string> Rejections => new()
    {
        { "experiments: [{name: exp", "line " },
        { Config(extraArmKey: ", wieght: 2"), "experiments[0].arms[1].wieght: unknown key" },
        { Config(weightB: "-2"), "experiments[0].arms[1].weight: must be a finite number > 0, got -2" },
        { Config(experiment: "forbidden"), "rejected by validation: experiment 'forbidden' is not allowed" },
        { "\n", "file is empty (write `experiments: []` for none)" },
    };

    [Theory]
    [MemberData(nameof(Rejections))]
    public void A_bad_file_is_logged_and_the_old_config_keeps_serving(string bad, string reason)
    {
        using var registry = Open(Validate);
        var good = registry.Current;

        Write(bad);
        WaitUntil(() => _log.Any(l => l.Contains(reason)), "the rejection to be logged");
        var line = _log.Single(l => l.Contains(reason));
        Assert.StartsWith($"{ConfigPath}: ", line);
        Assert.EndsWith("still serving version 1", line);
        Assert.Same(good, registry.Current);
        Assert.Equal(1, registry.Version);
        Assert.Equal("b", registry.Assign("exp", "someone-in-b").Experiment.Arms[1].Name);

        Write(Config(weightB: "5"));
        WaitUntil(() => registry.Version >= 2, "the fixed file to load");
        Assert.Equal(2, registry.Version);
        Assert.Equal(5, registry.Current.Experiments["exp"].Arms[1].Weight);
        // One report per bad file, not one per poll.
        Assert.Single(_log, l => l.Contains(reason));
    }

    private static void Validate(ExperimentConfig config)
    {
        if (config.Experiments.ContainsKey("forbidden"))
            throw new InvalidOperationException("experiment 'forbidden' is not allowed");
    }

    [Fact]
    public void A_bad_file_at_start_throws()
    {
        Write(Config(weightB: "0"));
        var e = Assert.Throws<InvalidDataException>(() => new ExperimentRegistry(ConfigPath, _store));
        Assert.StartsWith($"{ConfigPath}: experiments[0].arms[1].weight: ", e.Message);
        Write(Config());
        Assert.Throws<InvalidDataException>(
            () => new ExperimentRegistry(ConfigPath, _store, _ => throw new InvalidOperationException("no")));
        Assert.Throws<FileNotFoundException>(() => new ExperimentRegistry(ConfigPath + ".missing", _store));
    }

    [Fact]
    public void Explicit_reload_throws_the_reason_and_keeps_the_old_config()
    {
        using var registry = Open();
        var good = registry.Current;
        Write(Config(weightB: ".inf"));
        var e = Assert.Throws<InvalidDataException>(registry.Reload);
        Assert.Equal($"{ConfigPath}: experiments[0].arms[1].weight: must be a finite number > 0, got .inf", e.Message);
        Assert.Same(good, registry.Current);
        Assert.Equal(1, registry.Version);

        Write(Config(weightB: "2"));
        registry.Reload();
        Assert.Equal(2, registry.Current.Experiments["exp"].Arms[1].Weight);
        Assert.Equal(2, registry.Version);
    }

    [Fact]
    public void Without_a_file_the_config_is_empty()
    {
        using var registry = new ExperimentRegistry(null, _store);
        Assert.Same(ExperimentConfig.Empty, registry.Current);
        Assert.Equal(0, registry.Version);
        var e = Assert.Throws<KeyNotFoundException>(() => registry.Assign("exp", "u"));
        Assert.Equal("no experiment named 'exp' (configured: none)", e.Message);
        Assert.Throws<InvalidOperationException>(registry.Reload);
    }

    [Fact]
    public void Assign_is_sticky_and_names_the_configured_experiments_when_missing()
    {
        using var registry = Open();
        var (experiment, arm) = registry.Assign("exp", "user-1");
        Assert.Equal(Assignment.Arm(experiment, "user-1"), arm);
        Assert.Equal(arm, registry.Assign("exp", "user-1").Arm);
        Assert.Null(registry.Assign("other", "user-1").Arm);
        var e = Assert.Throws<KeyNotFoundException>(() => registry.Assign("nope", "user-1"));
        Assert.Equal("no experiment named 'nope' (configured: exp, other)", e.Message);
    }

    [Fact]
    public void Outcomes_go_to_the_served_arm_or_the_subjects_assignment()
    {
        using var registry = Open();
        var assigned = registry.Assign("exp", "user-1").Arm!;
        var served = assigned == "a" ? "b" : "a";
        // The stored request wins over the assignment (which a reload may have changed since).
        _store.RecordRequest("exp", served, "req-1", "user-1", 3, 10);
        registry.RecordOutcome("exp", "user-1", "req-1", "thumbs", 1);
        registry.RecordOutcome("exp", "user-1", null, "thumbs", 0);
        registry.RecordOutcome("exp", "user-1", "req-unknown", "thumbs", 0);
        var figures = _store.Figures(registry.Current.Experiments["exp"]);
        var byArm = figures.Arms.ToDictionary(a => a.Arm, a => a.Outcomes["thumbs"].Moments);
        Assert.Equal((1L, 1.0), (byArm[served].N, byArm[served].Mean));
        Assert.Equal((2L, 0.0), (byArm[assigned].N, byArm[assigned].Mean));
    }

    [Fact]
    public void Outcomes_without_an_arm_fail_with_the_reason()
    {
        using var registry = Open();
        var neither = Assert.Throws<ArgumentException>(() => registry.RecordOutcome("exp", null, null, "thumbs", 1));
        Assert.Contains("needs a subject id or a recorded request id", neither.Message);
        var unknown = Assert.Throws<KeyNotFoundException>(() => registry.RecordOutcome("exp", null, "r", "thumbs", 1));
        Assert.Contains("no request 'r' recorded for experiment 'exp'", unknown.Message);
        var outside = Assert.Throws<ArgumentException>(() => registry.RecordOutcome("other", "user-1", "r", "t", 1));
        Assert.Contains("subject 'user-1' is not enrolled in experiment 'other'", outside.Message);
        var missing = Assert.Throws<KeyNotFoundException>(() => registry.RecordOutcome("nope", "user-1", null, "t", 1));
        Assert.StartsWith("no experiment named 'nope'", missing.Message);
    }
}
