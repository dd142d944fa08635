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
        await RowStreams.InterleaveAsync(generations, (arm, update) =>
        {
            var state = states[arm];
            state.Tokens.AddRange(update.TokenIds);
            state.LogProbSum += update.LogProbs.Sum(p => (double)p);
            state.Finish = update.Finish ?? state.Finish;
            return new CompareResponse { Arm = arm, Update = RequestMapper.ToApi(update, readout, state.WatchedSums) };
        }, message => stream.WriteAsync(message, ct), ct, (arm, e) =>
        {
            // One arm whose activations overflowed ends there; its summary says so and the others go on.
            if (e is not GenerationFailedException) return false;
            states[arm].Finish = Engine.FinishReason.Error;
            return true;
        });

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
