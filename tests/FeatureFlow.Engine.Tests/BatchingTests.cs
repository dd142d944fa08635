using FeatureFlow.Models;
using FeatureFlow.Steering;
using FeatureFlow.Steering.Packs;

namespace FeatureFlow.Engine.Tests;

/// <summary>The scheduler: batch invariance, limits, departures and the KV accounting.</summary>
public class BatchingTests(EngineFixture f) : IClassFixture<EngineFixture>
{
    private static FeatureVector Feature(int seed, float threshold = 0f)
    {
        var rng = new Random(seed);
        var v = Numerics.RandomVector(rng, 64);
        var norm = MathF.Sqrt(v.Sum(x => x * x));
        return new FeatureVector(v.Select(x => x / norm).ToArray(), Numerics.RandomVector(rng, 64, 0.5f), 0.1f, threshold);
    }

    /// <summary>
    /// Requests that differ in everything a row can differ in: prompt, length, sampling, seed, stop strings and
    /// steering (none, add, rescale, clamp, generated-only, a shipped pack, terms at several sites).
    /// </summary>
    internal static GenerationRequest[] MixedRequests(GenerationEngine engine, int count, int seed = 11)
    {
        var catalog = SteeringCatalog.Load(engine.Folder);
        var pack = catalog.Packs.Get("happy", "pack");
        SteeringSpec[] steering =
        [
            SteeringSpec.None,
            new([new SteeringTerm(new Site(2, SiteKind.ResidPost), SteeringOperation.Add, 4f, Feature(1))]),
            new([new SteeringTerm(new Site(1, SiteKind.MlpOut), SteeringOperation.Rescale, -2f, Feature(2))]),
            new([new SteeringTerm(new Site(3, SiteKind.AttnOut), SteeringOperation.Clamp, 3f, Feature(3, 0.2f))]),
            new([new SteeringTerm(new Site(3, SiteKind.ResidPost), SteeringOperation.Add, 6f, Feature(4), SteeringScope.GeneratedOnly)]),
            new(pack.At(1f, SteeringScope.All, "pack").ToArray()),
            new(
            [
                new SteeringTerm(new Site(0, SiteKind.AttnOut), SteeringOperation.Add, 1.5f, Feature(5)),
                new SteeringTerm(new Site(1, SiteKind.MlpOut), SteeringOperation.Rescale, 0f, Feature(6)),
                new SteeringTerm(new Site(4, SiteKind.ResidPost), SteeringOperation.Clamp, 2f, Feature(7, 0.1f), SteeringScope.PromptOnly),
            ]),
        ];
        string[] prompts = ["", "Once upon a time", "Lily and Tom went to the park", "The little dog", "One day, a big red ball fell"];
        var rng = new Random(seed);
        return Enumerable.Range(0, count).Select(i => new GenerationRequest
        {
            PromptIds = engine.EncodePrompt(prompts[i % prompts.Length]),
            MaxTokens = 20 + rng.Next(100),
            Sampling = (i % 4) switch
            {
                0 => new SamplingOptions { Temperature = 0f },
                1 => new SamplingOptions { Temperature = 1f, Seed = (ulong)rng.Next() },
                2 => new SamplingOptions { Temperature = 0.8f, TopP = 0.9f, Seed = (ulong)rng.Next() },
                _ => new SamplingOptions { Temperature = 1.2f, TopK = 20, Seed = (ulong)rng.Next() },
            },
            Stop = i % 5 == 3 ? ["park", "."] : [],
            Steering = steering[i % steering.Length],
        }).ToArray();
    }

    internal static async Task<(List<int> Ids, List<float> LogProbs, string Text)> Run(GenerationEngine engine, GenerationRequest request)
    {
        var ids = new List<int>();
        var logProbs = new List<float>();
        var text = new System.Text.StringBuilder();
        await foreach (var u in engine.GenerateAsync(request))
        {
            ids.AddRange(u.TokenIds);
            logProbs.AddRange(u.LogProbs);
            text.Append(u.Text);
        }
        return (ids, logProbs, text.ToString());
    }

    [Fact]
    public async Task Sixteen_mixed_requests_joining_at_different_times_give_exactly_their_solo_tokens_and_logits()
    {
        var requests = MixedRequests(f.Engine, 16);
        var solo = new List<(List<int> Ids, List<float> LogProbs, string Text)>();
        foreach (var r in requests) solo.Add(await Run(f.Engine, r));

        // Half start together; the rest join one by one while the first ones are decoding.
        var started = new List<Task<(List<int> Ids, List<float> LogProbs, string Text)>>();
        var steps = f.Engine.Figures().DecodeSteps;
        foreach (var (r, i) in requests.Select((r, i) => (r, i)))
        {
            if (i >= 8)
            {
                var target = f.Engine.Figures().DecodeSteps + 3;
                while (f.Engine.Figures().DecodeSteps < target && f.Engine.Figures().RunningRows > 0) await Task.Delay(1);
            }
            started.Add(Run(f.Engine, r));
        }
        var batched = await Task.WhenAll(started);

        var figures = f.Engine.Figures();
        Assert.True(figures.DecodeSteps > steps, "no decode step ran");
        for (var i = 0; i < requests.Length; i++)
        {
            Assert.Equal(solo[i].Ids, batched[i].Ids);
            Assert.Equal(solo[i].Text, batched[i].Text);
            // Bit-exact: the log-probabilities are a function of every logit of the row.
            Assert.Equal(solo[i].LogProbs.Select(BitConverter.SingleToInt32Bits), batched[i].LogProbs.Select(BitConverter.SingleToInt32Bits));
        }
        Assert.True(batched.Select(b => b.Ids).Distinct(new SequenceComparer()).Count() > 8, "the requests should not all generate the same text");
    }

    private static async Task<(List<int> Ids, List<float> LogProbs)> Collect(Generation generation)
    {
        using (generation)
        {
            var ids = new List<int>();
            var logProbs = new List<float>();
            await foreach (var u in generation.ReadAllAsync())
            {
                ids.AddRange(u.TokenIds);
                logProbs.AddRange(u.LogProbs);
            }
            return (ids, logProbs);
        }
    }

    private static IEnumerable<int> Bits(IEnumerable<float> values) => values.Select(BitConverter.SingleToInt32Bits);

    [Fact]
    public async Task A_step_runs_the_graph_without_hooks_only_when_no_row_steers_or_reads_a_site()
    {
        async Task<(long Prefills, long Decodes, long PlainPrefills, long PlainDecodes)> Steps(GenerationRequest r)
        {
            var before = f.Engine.Figures();
            await Run(f.Engine, r);
            var after = f.Engine.Figures();
            return (after.PrefillSteps - before.PrefillSteps, after.DecodeSteps - before.DecodeSteps,
                after.PlainPrefillSteps - before.PlainPrefillSteps, after.PlainDecodeSteps - before.PlainDecodeSteps);
        }
        var site = new Site(2, SiteKind.ResidPost);
        var request = new GenerationRequest
        {
            PromptIds = f.Engine.EncodePrompt("Once upon a time"), MaxTokens = 20,
            Sampling = new SamplingOptions { Temperature = 0f },
        };
        SteeringSpec Add(SteeringScope scope) =>
            new([new SteeringTerm(site, SteeringOperation.Add, 4f, Feature(1), scope)]);

        var unsteered = await Steps(request);
        Assert.True(unsteered.Decodes > 0);
        Assert.Equal((1L, unsteered.Decodes), (unsteered.PlainPrefills, unsteered.PlainDecodes));
        var steered = await Steps(request with { Steering = Add(SteeringScope.All) });
        Assert.Equal((1L, 0L, 0L), (steered.Prefills, steered.PlainPrefills, steered.PlainDecodes));
        // Generated-only terms leave the prompt's tensors zero: the prefill needs no hooks, the decode steps do.
        var generatedOnly = await Steps(request with { Steering = Add(SteeringScope.GeneratedOnly) });
        Assert.Equal((1L, 0L), (generatedOnly.PlainPrefills, generatedOnly.PlainDecodes));
        var readout = await Steps(request with { Readout = [site] });
        Assert.Equal((0L, 0L), (readout.PlainPrefills, readout.PlainDecodes));
    }

    /// <summary>
    /// A row that steers with add vectors alone runs the hooked graph, whose SteeringHook kernel skips the feature
    /// terms of rows whose α and β are zero: alone, every row of its steps skips them; beside a row with a rescale
    /// term, that row computes them and the add-only row still skips them. It gets the same bits either way.
    /// </summary>
    [Fact]
    public async Task Add_only_rows_give_the_same_bits_alone_and_beside_a_row_with_feature_terms()
    {
        var addOnly = new GenerationRequest
        {
            PromptIds = f.Engine.EncodePrompt("Once upon a time"), MaxTokens = 40,
            Sampling = new SamplingOptions { Temperature = 1f, Seed = 9 },
            Steering = new([new SteeringTerm(new Site(2, SiteKind.ResidPost), SteeringOperation.Add, 4f, Feature(1)),
                new SteeringTerm(new Site(0, SiteKind.AttnOut), SteeringOperation.Add, 2f, Feature(5))]),
        };
        var rescaled = addOnly with
        {
            MaxTokens = 60, Sampling = new SamplingOptions { Temperature = 0f },
            Steering = new([new SteeringTerm(new Site(1, SiteKind.MlpOut), SteeringOperation.Rescale, -2f, Feature(2))]),
        };
        var before = f.Engine.Figures();
        var solo = await Run(f.Engine, addOnly);
        var alone = f.Engine.Figures();
        Assert.True(alone.DecodeSteps > before.DecodeSteps);
        Assert.Equal(0, alone.PlainDecodeSteps - before.PlainDecodeSteps);

        // Queued together, so the add-only row's 40 tokens all decode beside the rescaled row's 60.
        var generations = f.Engine.SubmitAll([rescaled, addOnly]);
        var together = await Task.WhenAll(generations.Select(Collect));
        Assert.Equal(solo.Ids, together[1].Ids);
        Assert.Equal(Bits(solo.LogProbs), Bits(together[1].LogProbs));
    }

    /// <summary>
    /// Unsteered rows decode throughout while waves of steered rows (and an unsteered one reading a site out) join
    /// when the first row reaches given token counts and leave a few tokens later, so the rows' steps switch between
    /// the graph without hooks and the hooked one several times. Every row must still give its solo run's bits.
    /// </summary>
    [Fact]
    public async Task Steered_rows_joining_and_leaving_switch_the_graph_without_changing_any_row_s_bits()
    {
        GenerationRequest[] unsteered =
        [
            new() { PromptIds = [1], MaxTokens = 200, Sampling = new SamplingOptions { Temperature = 0f } },
            new()
            {
                PromptIds = f.Engine.EncodePrompt("Once upon a time"), MaxTokens = 150,
                Sampling = new SamplingOptions { Temperature = 1f, Seed = 7 },
            },
            new()
            {
                PromptIds = f.Engine.EncodePrompt("The little dog"), MaxTokens = 150,
                Sampling = new SamplingOptions { Temperature = 0.8f, TopP = 0.9f, Seed = 8 },
            },
        ];
        // Every kind of steering of MixedRequests (index 0 steers nothing), short enough to leave mid-way.
        var steered = MixedRequests(f.Engine, 7, seed: 21)[1..].Select(r => r with { MaxTokens = 12 }).ToArray();
        var reader = new GenerationRequest
        {
            PromptIds = f.Engine.EncodePrompt("Lily and Tom"), MaxTokens = 12,
            Sampling = new SamplingOptions { Temperature = 0f }, Readout = [new Site(1, SiteKind.MlpOut)],
        };
        (int At, GenerationRequest[] Requests)[] waves =
            [(10, steered[..2]), (45, [steered[2], reader]), (80, steered[3..5]), (115, steered[5..])];
        GenerationRequest[] joiners = [.. waves.SelectMany(w => w.Requests)];
        var solo = new List<(List<int> Ids, List<float> LogProbs, string Text)>();
        foreach (var r in unsteered.Concat(joiners)) solo.Add(await Run(f.Engine, r));

        var before = f.Engine.Figures();
        var joined = new List<Generation>();
        var nextWave = 0;
        long trigger = -1;
        // On the loop thread after each token: a wave is queued when the first unsteered row reaches its count.
        void OnToken(long id, int count)
        {
            if (id != Volatile.Read(ref trigger)) return;
            for (; nextWave < waves.Length && count >= waves[nextWave].At; nextWave++)
                joined.AddRange(f.Engine.SubmitAll(waves[nextWave].Requests));
        }
        f.Engine.TokenGenerated += OnToken;
        (List<int> Ids, List<float> LogProbs)[] running;
        try
        {
            var generations = f.Engine.SubmitAll(unsteered);
            Volatile.Write(ref trigger, generations[0].Id);
            running = await Task.WhenAll(generations.Select(Collect));
        }
        finally
        {
            f.Engine.TokenGenerated -= OnToken;
        }
        Assert.Equal(waves.Length, nextWave);
        var batched = running.Concat(await Task.WhenAll(joined.Select(Collect))).ToArray();

        var after = f.Engine.Figures();
        var plain = after.PlainDecodeSteps - before.PlainDecodeSteps;
        var steps = after.DecodeSteps - before.DecodeSteps;
        Assert.True(plain > 0 && plain < steps, $"{plain} of {steps} decode steps ran the graph without hooks");
        for (var i = 0; i < batched.Length; i++)
        {
            Assert.Equal(solo[i].Ids, batched[i].Ids);
            Assert.Equal(Bits(solo[i].LogProbs), Bits(batched[i].LogProbs));
        }
    }

    [Fact]
    public async Task A_folder_without_the_batched_graph_without_hooks_runs_every_step_hooked_with_the_same_bits()
    {
        var dir = Directory.CreateTempSubdirectory("featureflow-no-plain-batched-").FullName;
        try
        {
            var manifest = f.Folder.Manifest with { Graphs = f.Folder.Manifest.Graphs with { BatchedPlain = null } };
            File.WriteAllText(Path.Combine(dir, Models.Folder.ModelManifest.FileName), manifest.ToJson());
            var graphs = manifest.Graphs;
            foreach (var file in new[] { graphs.Hooked, graphs.Plain, graphs.Batched!, manifest.Tokenizer.File })
                File.Copy(Path.Combine(f.Folder.Directory, file), Path.Combine(dir, file));
            using var engine = new GenerationEngine(Models.Folder.ModelFolder.Open(dir), EngineFixture.Options);
            var requests = MixedRequests(f.Engine, 4, seed: 3).Select(r => r with { Steering = SteeringSpec.None });
            foreach (var r in requests)
            {
                var expected = await Run(f.Engine, r);
                var actual = await Run(engine, r);
                Assert.Equal(expected.Ids, actual.Ids);
                Assert.Equal(Bits(expected.LogProbs), Bits(actual.LogProbs));
            }
            var figures = engine.Figures();
            Assert.True(figures.DecodeSteps > 0);
            Assert.Equal((0L, 0L), (figures.PlainPrefillSteps, figures.PlainDecodeSteps));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public async Task Rows_really_share_decode_steps()
    {
        var before = f.Engine.Figures();
        var requests = Enumerable.Range(0, 8).Select(i => new GenerationRequest
        {
            PromptIds = [1], MaxTokens = 40, Sampling = new SamplingOptions { Temperature = 1f, Seed = (ulong)i + 1 },
        }).ToArray();
        await Task.WhenAll(requests.Select(r => Run(f.Engine, r)));
        var after = f.Engine.Figures();
        var rowsPerStep = (after.DecodeRows - before.DecodeRows) / (double)(after.DecodeSteps - before.DecodeSteps);
        Assert.True(rowsPerStep > 2, $"{rowsPerStep:F2} rows per decode step: the requests ran one after the other");
    }

    [Fact]
    public async Task Sixty_four_concurrent_streams_complete_and_leave_the_engine_idle()
    {
        var requests = MixedRequests(f.Engine, 64, seed: 5);
        var results = await Task.WhenAll(requests.Select(r => Run(f.Engine, r)));
        for (var i = 0; i < requests.Length; i++)
            Assert.InRange(results[i].Ids.Count, 0, requests[i].MaxTokens);
        AssertIdle(f.Engine);
    }

    [Fact]
    public async Task A_cancellation_storm_leaves_the_engine_idle_and_the_next_request_correct()
    {
        var rng = new Random(3);
        var requests = MixedRequests(f.Engine, 200, seed: 9);
        var tasks = requests.Select(async r =>
        {
            using var cts = new CancellationTokenSource();
            var stopAfter = rng.Next(0, 30);
            var mode = rng.Next(3);
            if (mode == 0) cts.CancelAfter(rng.Next(0, 50));
            try
            {
                var n = 0;
                await foreach (var _ in f.Engine.GenerateAsync(r, cts.Token))
                    if (++n >= stopAfter)
                    {
                        if (mode == 1) cts.Cancel();
                        else break; // abandon the stream without cancelling
                    }
            }
            catch (OperationCanceledException)
            {
            }
        }).ToArray();
        await Task.WhenAll(tasks);
        await WaitIdle(f.Engine);
        AssertIdle(f.Engine);

        var c = RunCReference.Case("greedy_prompt_once_upon_a_time");
        var after = await Run(f.Engine, new GenerationRequest { PromptIds = c.PromptIds, MaxTokens = c.SampledIds.Length, Sampling = new SamplingOptions { Temperature = 0f } });
        Assert.Equal(c.SampledIds, after.Ids);
    }

    [Fact]
    public async Task Once_warm_a_decoded_token_allocates_nothing_on_the_loop_thread()
    {
        // The loop thread's own allocation counter, read on that thread at the 50th and 250th token: everything it
        // allocated in between (model step, sampling, logging the token for the reader) while one request runs.
        // A per-step copy of the cache, a fresh update record or a token's string would each show here.
        using var engine = new GenerationEngine(f.Folder, EngineFixture.Options);
        var at = new long[2];
        engine.TokenGenerated += (_, tokens) =>
        {
            if (tokens == 50) at[0] = GC.GetAllocatedBytesForCurrentThread();
            else if (tokens == 250) at[1] = GC.GetAllocatedBytesForCurrentThread();
        };
        var (ids, _, text) = await Run(engine, EngineFixture.LongStory with { Stop = ["never appears in a story"] });
        Assert.True(ids.Count == EngineFixture.LongStory.MaxTokens,
            $"the generation ended after {ids.Count} tokens: {text}");
        Assert.Equal(0, at[1] - at[0]);
    }

    [Fact]
    public async Task A_full_queue_refuses_with_the_limit_s_name_while_admitted_requests_complete()
    {
        using var engine = new GenerationEngine(f.Folder, EngineFixture.Options with { MaxBatchRows = 1, MaxQueuedRequests = 2 });
        var request = new GenerationRequest { PromptIds = [1], MaxTokens = 300, Sampling = new SamplingOptions { Temperature = 0f } };
        var first = engine.Submit(request);
        await WaitUntil(() => engine.Figures().RunningRows == 1);
        var queued = new[] { engine.Submit(request), engine.Submit(request) };
        var e = Assert.Throws<EngineOverloadedException>(() => engine.Submit(request));
        Assert.Equal("max_queued_requests", e.Limit);
        Assert.Contains("max_queued_requests (2)", e.Message);
        Assert.True(e.RetryAfter > TimeSpan.Zero);

        var expected = RunCReference.Case("greedy_bos_200").SampledIds;
        foreach (var g in queued.Prepend(first))
            using (g)
            {
                var ids = new List<int>();
                await foreach (var u in g.ReadAllAsync()) ids.AddRange(u.TokenIds);
                Assert.Equal(expected, ids.Take(expected.Length));
            }
        AssertIdle(engine);

        using var tight = new GenerationEngine(f.Folder, EngineFixture.Options with { MaxBatchRows = 1, MaxQueuedTokens = 400 });
        using var running = tight.Submit(request);
        await WaitUntil(() => tight.Figures().RunningRows == 1);
        using var waiting = tight.Submit(request with { MaxTokens = 100 });
        var tokens = Assert.Throws<EngineOverloadedException>(() => tight.Submit(request));
        Assert.Equal("max_queued_tokens", tokens.Limit);
    }

    [Fact]
    public async Task A_request_that_does_not_fit_the_kv_budget_waits_for_room_and_then_runs()
    {
        using var engine = new GenerationEngine(f.Folder, EngineFixture.Options with { MaxBatchRows = 4, KvTokenBudget = 512 });
        var request = new GenerationRequest { PromptIds = [1], MaxTokens = 300, Sampling = new SamplingOptions { Temperature = 0f } };
        var maxRunning = 0;
        void OnToken(long id, int count) => maxRunning = Math.Max(maxRunning, engine.Figures().RunningRows);
        engine.TokenGenerated += OnToken;
        var results = await Task.WhenAll(Run(engine, request), Run(engine, request));
        engine.TokenGenerated -= OnToken;
        Assert.Equal(results[0].Ids, results[1].Ids);
        Assert.Equal(1, maxRunning); // 2 × 301 tokens do not fit 512: the second waited
        AssertIdle(engine);
    }

    [Fact]
    public async Task A_row_whose_logits_become_non_finite_ends_with_an_error_and_its_batch_mates_are_unaffected()
    {
        // Every compiled tensor is finite and r·v is in range, but e·h is ~1e31 on real activations, so
        // (r − 1)·a(h)·v overflows to infinity and the row's logits become NaN a few operators later.
        // Two features, e and −e, so that one of them fires whatever the sign of e·h.
        FeatureVector Huge(float sign) => new(Enumerable.Repeat(0.1f, 64).ToArray(), Enumerable.Repeat(sign * 1e30f, 64).ToArray());
        var site = new Site(1, SiteKind.ResidPost);
        var bad = new GenerationRequest
        {
            PromptIds = [1], MaxTokens = 30, Sampling = new SamplingOptions { Temperature = 0f },
            Steering = new SteeringSpec([new(site, SteeringOperation.Rescale, 1e15f, Huge(1)), new(site, SteeringOperation.Rescale, 1e15f, Huge(-1))]),
        };
        var good = new GenerationRequest { PromptIds = f.Engine.EncodePrompt("Once upon a time"), MaxTokens = 30, Sampling = new SamplingOptions { Temperature = 1f, Seed = 3 } };
        var solo = await Run(f.Engine, good);

        var records = new List<GenerationRecord>();
        void OnFinished(GenerationRecord r) { lock (records) records.Add(r); }
        // Subscribed before submitting: the bad row can fail and be reported before the next line runs.
        f.Engine.GenerationFinished += OnFinished;
        var generations = f.Engine.SubmitAll([bad, good]);
        try
        {
            var e = await Assert.ThrowsAsync<GenerationFailedException>(async () => { await foreach (var _ in generations[0].ReadAllAsync()) { } });
            Assert.Contains("non-finite", e.Message);
            var ids = new List<int>();
            await foreach (var u in generations[1].ReadAllAsync()) ids.AddRange(u.TokenIds);
            Assert.Equal(solo.Ids, ids);
            await WaitUntil(() => { lock (records) return records.Count == 2; });
        }
        finally
        {
            f.Engine.GenerationFinished -= OnFinished;
            foreach (var g in generations) g.Dispose();
        }
        Assert.Equal(FinishReason.Error, records.Single(r => r.Id == generations[0].Id).Finish);
        AssertIdle(f.Engine);
    }

    private static Task WaitIdle(GenerationEngine engine) => WaitUntil(() => engine.ActiveGenerations == 0);

    private static async Task WaitUntil(Func<bool> condition)
    {
        for (var i = 0; i < 1000 && !condition(); i++) await Task.Delay(5);
    }

    private static void AssertIdle(GenerationEngine engine)
    {
        var figures = engine.Figures();
        Assert.Equal(0, figures.QueuedRequests);
        Assert.Equal(0L, figures.QueuedTokens);
        Assert.Equal(0, figures.RunningRows);
        Assert.Equal(0L, figures.KvTokensReserved);
        Assert.Equal(0L, figures.KvTokensInUse);
    }

    private sealed class SequenceComparer : IEqualityComparer<List<int>>
    {
        public bool Equals(List<int>? a, List<int>? b) => a!.SequenceEqual(b!);
        public int GetHashCode(List<int> ids) => ids.Aggregate(17, (h, x) => h * 31 + x);
    }
}
