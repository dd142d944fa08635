using FeatureFlow.Models.Folder;

namespace FeatureFlow.Engine.Tests;

/// <summary>
/// A folder without the batched graph (as <c>featureflow hook</c> writes for third-party graphs) is served row by
/// row through <see cref="ConcatModelRunner"/> on the Concat-layout graphs.
/// </summary>
public sealed class ConcatRunnerTests(EngineFixture f) : IClassFixture<EngineFixture>, IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("featureflow-concat-runner-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    private GenerationEngine ConcatEngine(EngineOptions? options = null)
    {
        var manifest = f.Folder.Manifest with
        {
            Graphs = f.Folder.Manifest.Graphs with { Batched = null, BatchedPlain = null },
        };
        File.WriteAllText(Path.Combine(_dir, ModelManifest.FileName), manifest.ToJson());
        foreach (var file in new[] { manifest.Graphs.Hooked, manifest.Graphs.Plain, manifest.Tokenizer.File })
            if (!File.Exists(Path.Combine(_dir, file))) File.Copy(Path.Combine(f.Folder.Directory, file), Path.Combine(_dir, file));
        foreach (var packs in new[] { "packs", "saes" })
            if (Directory.Exists(Path.Combine(f.Folder.Directory, packs)) && !Directory.Exists(Path.Combine(_dir, packs)))
                CopyTree(Path.Combine(f.Folder.Directory, packs), Path.Combine(_dir, packs));
        return new GenerationEngine(ModelFolder.Open(_dir), options ?? EngineFixture.Options);
    }

    private static void CopyTree(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var file in Directory.GetFiles(from)) File.Copy(file, Path.Combine(to, Path.GetFileName(file)));
        foreach (var dir in Directory.GetDirectories(from)) CopyTree(dir, Path.Combine(to, Path.GetFileName(dir)));
    }

    public static TheoryData<string> GreedyCases() => new(RunCReference.Cases.Select(c => c.Name));

    [Theory]
    [MemberData(nameof(GreedyCases))]
    public async Task Greedy_decoding_row_by_row_reproduces_run_c(string name)
    {
        using var engine = ConcatEngine();
        Assert.IsType<ConcatModelRunner>(engine.Runner);
        var c = RunCReference.Case(name);
        var run = await BatchingTests.Run(engine, new GenerationRequest
        {
            PromptIds = c.PromptIds, MaxTokens = c.SampledIds.Length, Sampling = new SamplingOptions { Temperature = 0f },
        });
        Assert.Equal(c.SampledIds, run.Ids);
    }

    [Fact]
    public async Task Concurrent_mixed_requests_equal_their_solo_runs_and_the_batched_engine_s_greedy_tokens()
    {
        using var engine = ConcatEngine(EngineFixture.Options with { MaxBatchRows = 6 });
        var requests = BatchingTests.MixedRequests(engine, 12);
        var solo = new List<(List<int> Ids, List<float> LogProbs, string Text)>();
        foreach (var r in requests) solo.Add(await BatchingTests.Run(engine, r));
        // Twelve requests on six rows: rows leave and later ones move into their slots while others decode.
        var together = await Task.WhenAll(requests.Select(r => BatchingTests.Run(engine, r)));
        for (var i = 0; i < requests.Length; i++)
        {
            Assert.Equal(solo[i].Ids, together[i].Ids);
            Assert.Equal(solo[i].LogProbs.Select(BitConverter.SingleToInt32Bits), together[i].LogProbs.Select(BitConverter.SingleToInt32Bits));
        }
        Assert.True(engine.Figures().PlainDecodeSteps > 0, "unsteered rows should run the graph without hooks");

        // The Concat graphs and the batched graph compute the same model with different kernels: greedy steered
        // generations agree token for token and in log-probability to float tolerance.
        foreach (var r in requests.Where(r => r.Sampling.Temperature == 0f))
        {
            var concat = await BatchingTests.Run(engine, r);
            var batched = await BatchingTests.Run(f.Engine, r);
            Assert.Equal(batched.Ids, concat.Ids);
            for (var t = 0; t < batched.LogProbs.Count; t++) Assert.Equal(batched.LogProbs[t], concat.LogProbs[t], 1e-3f);
        }
    }

    [Fact]
    public async Task Read_out_site_values_match_the_batched_engine()
    {
        using var engine = ConcatEngine();
        var site = new Models.Site(2, Models.SiteKind.ResidPost);
        var request = new GenerationRequest
        {
            PromptIds = engine.EncodePrompt("Once upon a time"), MaxTokens = 8,
            Sampling = new SamplingOptions { Temperature = 0f }, Readout = [site],
        };
        var concat = await Collect(engine, request);
        var batched = await Collect(f.Engine, request);
        Assert.Equal(batched.Count, concat.Count);
        for (var t = 0; t < batched.Count; t++)
            for (var j = 0; j < batched[t].Length; j++) Assert.Equal(batched[t][j], concat[t][j], 1e-4f);
    }

    private static async Task<List<float[]>> Collect(GenerationEngine engine, GenerationRequest request)
    {
        var values = new List<float[]>();
        await foreach (var u in engine.GenerateAsync(request))
            values.AddRange(u.SiteValues);
        return values;
    }
}
