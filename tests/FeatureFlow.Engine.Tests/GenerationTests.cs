using FeatureFlow.Models;
using FeatureFlow.Steering;

namespace FeatureFlow.Engine.Tests;

public class GenerationTests(EngineFixture f) : IClassFixture<EngineFixture>
{
    private static readonly SamplingOptions Greedy = new() { Temperature = 0f };

    public static TheoryData<string> RunCCases() => new(RunCReference.Cases.Select(c => c.Name));

    [Theory]
    [MemberData(nameof(RunCCases))]
    public async Task Greedy_generation_reproduces_run_c_token_for_token(string name)
    {
        var c = RunCReference.Case(name);
        var (ids, text, last) = await f.Engine.CollectAsync(new GenerationRequest { PromptIds = c.PromptIds, MaxTokens = c.SampledIds.Length, Sampling = Greedy });
        Assert.Equal(c.SampledIds, ids);
        Assert.Equal(FinishReason.Length, last.Finish);
        Assert.Equal(new Usage(c.PromptIds.Length, c.SampledIds.Length), last.Usage);
        // run.c prints the prompt's pieces, the generated pieces, then one newline.
        var promptText = string.Concat(c.PromptIds.Skip(1).Select((id, i) => System.Text.Encoding.UTF8.GetString(f.Engine.Tokenizer.DecodePiece(c.PromptIds[i], id))));
        Assert.Equal(c.Text, promptText + text + "\n");
    }

    [Fact]
    public async Task Empty_prompt_generates_from_bos_like_run_c()
    {
        var c = RunCReference.Case("greedy_bos_200");
        var (ids, _, _) = await f.Engine.CollectAsync(new GenerationRequest { PromptIds = f.Engine.EncodePrompt(""), MaxTokens = 40, Sampling = Greedy });
        Assert.Equal(c.SampledIds[..40], ids);
    }

    [Fact]
    public async Task Same_seed_gives_the_same_tokens_and_another_seed_does_not()
    {
        GenerationRequest Request(ulong seed) => new() { PromptIds = [1], MaxTokens = 64, Sampling = new SamplingOptions { Temperature = 1f, Seed = seed } };
        var a = await f.Engine.CollectAsync(Request(42));
        var b = await f.Engine.CollectAsync(Request(42));
        var c = await f.Engine.CollectAsync(Request(43));
        Assert.Equal(a.Ids, b.Ids);
        Assert.NotEqual(a.Ids, c.Ids);
    }

    [Theory]
    [InlineData(1f, 1)]
    [InlineData(1e-6f, 0)]
    public async Task Top_k_1_and_a_tiny_top_p_are_greedy(float topP, int topK)
    {
        var greedy = await f.Engine.CollectAsync(new GenerationRequest { PromptIds = [1], MaxTokens = 32, Sampling = Greedy });
        var truncated = await f.Engine.CollectAsync(new GenerationRequest { PromptIds = [1], MaxTokens = 32, Sampling = new SamplingOptions { Temperature = 1.5f, TopP = topP, TopK = topK, Seed = 7 } });
        Assert.Equal(greedy.Ids, truncated.Ids);
    }

    [Fact]
    public async Task Stop_string_ends_generation_before_it()
    {
        var (ids, text, last) = await f.Engine.CollectAsync(new GenerationRequest { PromptIds = [1], MaxTokens = 100, Sampling = Greedy, Stop = ["Lily"] });
        Assert.Equal("Once upon a time, there was a little girl named ", text);
        Assert.Equal(FinishReason.Stop, last.Finish);
        Assert.True(ids.Count < 100);
    }

    [Fact]
    public async Task Steering_on_generated_tokens_changes_the_generation_after_the_first_token()
    {
        var v = Numerics.RandomVector(new Random(5), 64);
        var term = new SteeringTerm(new Site(3, SiteKind.ResidPost), SteeringOperation.Add, 6f, new FeatureVector(v), SteeringScope.GeneratedOnly);
        var baseline = await f.Engine.CollectAsync(new GenerationRequest { PromptIds = [1], MaxTokens = 24, Sampling = Greedy });
        var steered = await f.Engine.CollectAsync(new GenerationRequest { PromptIds = [1], MaxTokens = 24, Sampling = Greedy, Steering = new SteeringSpec([term]) });
        Assert.Equal(baseline.Ids[0], steered.Ids[0]); // sampled from the unsteered prompt
        Assert.NotEqual(baseline.Ids, steered.Ids);
    }

    public static TheoryData<GenerationRequest, string> BadRequests() => new()
    {
        { new GenerationRequest { PromptIds = [1], MaxTokens = 0 }, "max_tokens" },
        { new GenerationRequest { PromptIds = [1], MaxTokens = -3 }, "max_tokens" },
        { new GenerationRequest { PromptIds = [1], MaxTokens = 512 }, "max_tokens" },
        { new GenerationRequest { PromptIds = [1], MaxTokens = 8, Sampling = new SamplingOptions { Temperature = -0.1f } }, "temperature" },
        { new GenerationRequest { PromptIds = [1], MaxTokens = 8, Sampling = new SamplingOptions { Temperature = float.NaN } }, "temperature" },
        { new GenerationRequest { PromptIds = [1], MaxTokens = 8, Sampling = new SamplingOptions { TopP = 0f } }, "top_p" },
        { new GenerationRequest { PromptIds = [1], MaxTokens = 8, Sampling = new SamplingOptions { TopP = 1.01f } }, "top_p" },
        { new GenerationRequest { PromptIds = [1], MaxTokens = 8, Sampling = new SamplingOptions { TopK = -1 } }, "top_k" },
        { new GenerationRequest { PromptIds = [1, 9999], MaxTokens = 8 }, "prompt_token_ids" },
        { new GenerationRequest { PromptIds = [1], MaxTokens = 8, Stop = [""] }, "stop[0]" },
    };

    [Theory]
    [MemberData(nameof(BadRequests))]
    public async Task Bad_requests_fail_before_generating_and_name_the_field(GenerationRequest request, string field)
    {
        var e = await Assert.ThrowsAsync<FieldValidationException>(() => f.Engine.CollectAsync(request));
        Assert.Equal(field, e.Field);
        Assert.Equal(0, f.Engine.ActiveGenerations);
    }

    [Fact]
    public async Task Cancelling_stops_the_loop_within_a_step()
    {
        var (record, atCancel) = await FinishedRecordAndTokensAt(async tokensNow =>
        {
            using var cts = new CancellationTokenSource();
            var received = 0;
            var at = -1;
            await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
            {
                await foreach (var _ in f.Engine.GenerateAsync(EngineFixture.LongStory, cts.Token))
                    if (++received == 3)
                    {
                        at = tokensNow();
                        cts.Cancel();
                    }
            });
            return at;
        });
        Assert.Equal(FinishReason.Cancelled, record.Finish);
        // The loop checks between steps: the step in flight when Cancel() ran completes, and the count read at
        // cancel time may lag the stream by the token whose update was just read.
        Assert.True(record.CompletionTokens <= atCancel + 2, $"{record.CompletionTokens} tokens generated; cancelled at {atCancel}");
        Assert.Equal(0, f.Engine.ActiveGenerations);
    }

    [Fact]
    public async Task A_reader_that_abandons_the_stream_stops_the_loop_and_frees_its_slot()
    {
        var (record, atLeave) = await FinishedRecordAndTokensAt(async tokensNow =>
        {
            var stream = f.Engine.GenerateAsync(EngineFixture.LongStory)
                .GetAsyncEnumerator();
            for (var taken = 0; taken < 2; taken++) Assert.True(await stream.MoveNextAsync());
            // The reader has left once its enumerator is disposed (what `return` inside `await foreach` does); the
            // count is read then, not before, since the loop decodes on while the disposal is under way.
            await stream.DisposeAsync();
            return tokensNow();
        });
        Assert.Equal(FinishReason.Cancelled, record.Finish);
        Assert.True(record.CompletionTokens <= atLeave + 2, $"{record.CompletionTokens} tokens; the reader left at {atLeave}");
        var figures = f.Engine.Figures();
        Assert.Equal((0, 0, 0L), (figures.RunningRows, figures.QueuedRequests, figures.KvTokensReserved));
    }

    [Fact]
    public async Task A_reader_that_falls_behind_gets_the_same_tokens_in_fewer_coalesced_updates()
    {
        var request = new GenerationRequest { PromptIds = [1], MaxTokens = 60, Sampling = new SamplingOptions { Temperature = 1f, Seed = 8 } };
        var each = await f.Engine.CollectAsync(request);
        using var generation = f.Engine.Submit(request);
        var ids = new List<int>();
        var logProbs = new List<float>();
        var text = new System.Text.StringBuilder();
        var updates = 0;
        GenerationUpdate? last = null;
        await foreach (var u in generation.ReadCoalescedAsync())
        {
            if (updates++ == 0) await Task.Delay(100); // the model runs ahead meanwhile
            ids.AddRange(u.TokenIds);
            logProbs.AddRange(u.LogProbs);
            text.Append(u.Text);
            last = u;
        }
        Assert.Equal(each.Ids, ids);
        Assert.Equal(each.Text, text.ToString());
        Assert.Equal(ids.Count, logProbs.Count);
        Assert.Equal(each.Last.Finish, last!.Finish);
        Assert.Equal(each.Last.Usage, last.Usage);
        Assert.True(updates < ids.Count, $"{updates} updates for {ids.Count} tokens: nothing was coalesced");
    }

    /// <summary>
    /// Runs <paramref name="act"/> (given the engine's count of generated tokens, read when it likes) and
    /// returns the engine's record of the generation it started, and what <paramref name="act"/> returned.
    /// </summary>
    private async Task<(GenerationRecord Record, int Value)> FinishedRecordAndTokensAt(Func<Func<int>, Task<int>> act)
    {
        var generated = 0;
        // The loop waits after its fourth token until the reader has acted (read three updates, then left or
        // cancelled), so the 400-token row cannot finish first however long a busy machine keeps the reader waiting.
        using var readerActed = new ManualResetEventSlim();
        void OnToken(long id, int count)
        {
            Volatile.Write(ref generated, count);
            if (count >= 4) readerActed.Wait(TimeSpan.FromSeconds(10));
        }
        f.Engine.TokenGenerated += OnToken;
        try
        {
            var value = 0;
            var record = await FinishedRecordOf(async () =>
            {
                try { value = await act(() => Volatile.Read(ref generated)); }
                finally { readerActed.Set(); }
            });
            return (record, value);
        }
        finally
        {
            f.Engine.TokenGenerated -= OnToken;
        }
    }

    /// <summary>Runs <paramref name="act"/> and returns the engine's record of the generation it started.</summary>
    private async Task<GenerationRecord> FinishedRecordOf(Func<Task> act)
    {
        var finished = new TaskCompletionSource<GenerationRecord>(TaskCreationOptions.RunContinuationsAsynchronously);
        void OnFinished(GenerationRecord r) => finished.TrySetResult(r);
        f.Engine.GenerationFinished += OnFinished;
        try
        {
            await act();
            return await finished.Task.WaitAsync(TimeSpan.FromSeconds(10));
        }
        finally
        {
            f.Engine.GenerationFinished -= OnFinished;
        }
    }
}
