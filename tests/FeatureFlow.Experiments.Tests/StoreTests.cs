using FeatureFlow.Experiments;

namespace FeatureFlow.Experiments.Tests;

public sealed class StoreTests : IDisposable
{
    private static readonly Experiment Exp = new("exp", "s", 1, "off",
        [new("off", 1, "{}"), new("half", 1, "{}"), new("full", 1, "{}")]);

    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("ff-store-");

    public void Dispose() => _dir.Delete(recursive: true);

    private static void Fill(ExperimentStore store)
    {
        store.RecordRequest("exp", "off", "r1", "u1", 10, 100);
        store.RecordRequest("exp", "off", "r2", null, 20, 300);
        store.RecordRequest("exp", "half", "r3", "u3", 5, 50);
        store.RecordRequest("other", "off", "r1", "u1", 1000, 1);
        foreach (var v in new[] { 1.0, 0, 1, 1, 0 }) store.RecordOutcome("exp", "off", "thumbs", v);
        foreach (var v in new[] { 1.0, 1, 1, 0, 1, 1 }) store.RecordOutcome("exp", "half", "thumbs", v);
        store.RecordOutcome("exp", "half", "rating", 4);
        store.RecordOutcome("exp", "gone", "thumbs", 7);
    }

    [Fact]
    public void Figures_sum_requests_and_summarise_outcomes_against_control()
    {
        using var store = ExperimentStore.Open(":memory:");
        Fill(store);
        var f = store.Figures(Exp);
        Assert.Equal(("exp", "off"), (f.Experiment, f.Control));
        Assert.Equal(["off", "half", "full"], f.Arms.Select(a => a.Arm));

        var off = f.Arms[0];
        Assert.True(off.IsControl);
        Assert.Equal((2L, 30L), (off.Requests, off.Tokens));
        Assert.Equal(200, off.LatencyMs.Mean, 9);
        Assert.Equal(Statistics.Mean([100.0, 300]), off.LatencyMs);
        Assert.Equal(["rating", "thumbs"], off.Outcomes.Keys.Order());
        Assert.Equal(Statistics.Mean([1.0, 0, 1, 1, 0]).Mean, off.Outcomes["thumbs"].Mean.Mean, 12);
        Assert.Null(off.Outcomes["thumbs"].VsControl);
        Assert.Equal(0, off.Outcomes["rating"].Mean.N);

        var half = f.Arms[1];
        Assert.False(half.IsControl);
        Assert.Equal((1L, 5L), (half.Requests, half.Tokens));
        AssertClose(Statistics.Mean([1.0, 1, 1, 0, 1, 1]), half.Outcomes["thumbs"].Mean);
        var expected = Statistics.Welch([1.0, 1, 1, 0, 1, 1], [1.0, 0, 1, 1, 0]);
        var vs = half.Outcomes["thumbs"].VsControl!.Value;
        Assert.Equal(expected.Diff, vs.Diff, 12);
        Assert.Equal(expected.PValue, vs.PValue, 9);
        Assert.Equal(expected.Low, vs.Low, 9);
        Assert.Equal(1, half.Outcomes["rating"].Mean.N);
        Assert.True(double.IsNaN(half.Outcomes["rating"].VsControl!.Value.Diff));

        var full = f.Arms[2];
        Assert.Equal((0L, 0L, 0L), (full.Requests, full.Tokens, full.LatencyMs.N));
        Assert.Equal(0, full.Outcomes["thumbs"].Mean.N);
    }

    [Fact]
    public void Arm_of_request_is_per_experiment()
    {
        using var store = ExperimentStore.Open(":memory:");
        Fill(store);
        Assert.Equal("half", store.ArmOfRequest("exp", "r3"));
        Assert.Equal("off", store.ArmOfRequest("other", "r1"));
        Assert.Null(store.ArmOfRequest("exp", "r9"));
        Assert.Null(store.ArmOfRequest("nope", "r3"));
    }

    [Fact]
    public void A_repeated_request_counts_once_and_cannot_change_arm()
    {
        using var store = ExperimentStore.Open(":memory:");
        store.RecordRequest("exp", "off", "r1", "u1", 10, 100);
        store.RecordRequest("exp", "off", "r1", "u1", 10, 100);
        var e = Assert.Throws<ArgumentException>(() => store.RecordRequest("exp", "half", "r1", "u1", 10, 100));
        Assert.Contains("already recorded in arm 'off'", e.Message);
        var f = store.Figures(Exp);
        Assert.Equal(1, f.Arms[0].Requests);
        Assert.Equal(0, f.Arms[1].Requests);
    }

    [Fact]
    public void Invalid_values_are_rejected()
    {
        using var store = ExperimentStore.Open(":memory:");
        Assert.Throws<ArgumentOutOfRangeException>(() => store.RecordOutcome("exp", "off", "x", double.NaN));
        Assert.Throws<ArgumentOutOfRangeException>(() => store.RecordRequest("exp", "off", "r", null, -1, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => store.RecordRequest("exp", "off", "r", null, 1, double.NaN));
        Assert.Throws<ArgumentException>(() => store.RecordOutcome("exp", "", "x", 1));
    }

    [Fact]
    public void Figures_survive_closing_and_reopening_the_file()
    {
        var path = Path.Combine(_dir.FullName, "figures.db");
        string before;
        using (var store = ExperimentStore.Open(path))
        {
            Assert.Equal("wal", store.JournalMode);
            Fill(store);
            before = Describe(store.Figures(Exp));
        }
        using (var store = ExperimentStore.Open(path))
        {
            Assert.Equal(before, Describe(store.Figures(Exp)));
            Assert.Equal("half", store.ArmOfRequest("exp", "r3"));
            store.RecordOutcome("exp", "full", "thumbs", 1);
            Assert.NotEqual(before, Describe(store.Figures(Exp)));
        }
    }

    [Fact]
    public void Concurrent_writers_lose_nothing()
    {
        using var store = ExperimentStore.Open(Path.Combine(_dir.FullName, "busy.db"));
        const int Threads = 8, PerThread = 250;
        Parallel.For(0, Threads, new ParallelOptions { MaxDegreeOfParallelism = Threads }, t =>
        {
            for (var i = 0; i < PerThread; i++)
            {
                var arm = Exp.Arms[i % 3].Name;
                store.RecordRequest("exp", arm, $"r{t}-{i}", $"u{t}", 2, i);
                store.RecordOutcome("exp", arm, "score", i % 3);
                Assert.Equal(arm, store.ArmOfRequest("exp", $"r{t}-{i}"));
            }
        });
        var f = store.Figures(Exp);
        Assert.Equal(Threads * PerThread, f.Arms.Sum(a => a.Requests));
        Assert.Equal(2L * Threads * PerThread, f.Arms.Sum(a => a.Tokens));
        Assert.Equal(Threads * PerThread, f.Arms.Sum(a => a.Outcomes["score"].Mean.N));
        for (var a = 0; a < 3; a++) Assert.Equal(a, f.Arms[a].Outcomes["score"].Mean.Mean, 12);
    }

    [Fact]
    public void Disposed_store_refuses_work()
    {
        var store = ExperimentStore.Open(":memory:");
        store.Dispose();
        store.Dispose();
        Assert.Throws<ObjectDisposedException>(() => store.ArmOfRequest("exp", "r1"));
    }

    private static void AssertClose(MeanInterval expected, MeanInterval actual)
    {
        Assert.Equal(expected.N, actual.N);
        Assert.Equal(expected.Mean, actual.Mean, 12);
        Assert.Equal(expected.Low, actual.Low, 9);
        Assert.Equal(expected.High, actual.High, 9);
    }

    private static string Describe(ExperimentFigures f) => string.Join("\n", f.Arms.Select(a =>
        $"{a.Arm} {a.IsControl} {a.Requests} {a.Tokens} {a.LatencyMs} " +
        string.Join(" ", a.Outcomes.OrderBy(o => o.Key, StringComparer.Ordinal)
            .Select(o => $"{o.Key}={o.Value.Moments}/{o.Value.Mean}/{o.Value.VsControl}"))));
}
