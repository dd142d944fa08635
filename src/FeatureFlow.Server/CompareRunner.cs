using System.Threading.Channels;
using FeatureFlow.Api.V1;
using FeatureFlow.Engine;
using Grpc.Core;

namespace FeatureFlow.Server;

/// <summary>
/// Streams the arms of one Compare into one response stream as their tokens come, then scores each arm: mean
/// log-probability under its own model, perplexity under the unsteered model, mean activation of watched features.
/// </summary>
public static class CompareRunner
{
    private sealed class ArmState(int watched)
    {
        public List<int> Tokens { get; } = [];
        public double LogProbSum { get; set; }
        public double[] WatchedSums { get; } = new double[watched];
        public Engine.FinishReason? Finish { get; set; }
    }

    public static async Task<IReadOnlyList<ArmSummary>> StreamAsync(IReadOnlyList<RequestMapper.CompareArm> arms, IReadOnlyList<Generation> generations,
        FeatureReadoutPlan readout, IServerStreamWriter<CompareResponse> stream, SequenceScorer scorer, CancellationToken ct)
    {
        var states = arms.Select(_ => new ArmState(readout.Watched.Count)).ToArray();
        // One writer at a time on the gRPC stream: the arms' readers hand their messages to this channel.
        var messages = Channel.CreateUnbounded<CompareResponse>(new UnboundedChannelOptions { SingleReader = true });
        var readers = generations.Select((g, arm) => Task.Run(async () =>
        {
            var state = states[arm];
            try
            {
                await foreach (var update in g.ReadAllAsync(ct).ConfigureAwait(false))
                {
                    state.Tokens.AddRange(update.TokenIds);
                    state.LogProbSum += update.LogProbs.Sum(p => (double)p);
                    state.Finish = update.Finish ?? state.Finish;
                    messages.Writer.TryWrite(new CompareResponse { Arm = arm, Update = RequestMapper.ToApi(update, readout, state.WatchedSums) });
                }
            }
            catch (GenerationFailedException)
            {
                // One arm whose activations overflowed ends there; its summary says so and the others go on.
                state.Finish = Engine.FinishReason.Error;
            }
        }, ct)).ToArray();
        var all = Task.WhenAll(readers);
        _ = all.ContinueWith(t => messages.Writer.TryComplete(t.Exception?.InnerException), TaskScheduler.Default);
        await foreach (var message in messages.Reader.ReadAllAsync(CancellationToken.None).ConfigureAwait(false))
            await stream.WriteAsync(message, ct).ConfigureAwait(false);
        await all.ConfigureAwait(false);

        var prompt = arms[0].Request.PromptIds;
        return await Task.Run(() => states.Select((s, arm) =>
        {
            var summary = new ArmSummary
            {
                Arm = arm,
                Label = arms[arm].Label,
                CompletionTokens = s.Tokens.Count,
                FinishReason = RequestMapper.ToApi(s.Finish ?? Engine.FinishReason.Cancelled),
                MeanLogprob = s.Tokens.Count == 0 ? double.NaN : s.LogProbSum / s.Tokens.Count,
                PerplexityUnsteered = scorer.Perplexity(prompt, s.Tokens),
                Seed = arms[arm].Request.Sampling.Seed,
            };
            for (var i = 0; i < readout.Watched.Count; i++)
                summary.Watched.Add(new WatchedFeature
                {
                    Hook = readout.Watched[i].Hook,
                    Index = readout.Watched[i].Index,
                    MeanActivation = s.Tokens.Count == 0 ? double.NaN : s.WatchedSums[i] / s.Tokens.Count,
                });
            return summary;
        }).ToArray(), ct).ConfigureAwait(false);
    }
}
