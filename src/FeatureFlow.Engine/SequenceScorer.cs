using FeatureFlow.Models;

namespace FeatureFlow.Engine;

/// <summary>
/// Log-probabilities of a given continuation under the unsteered model (the plain graph, one forward pass over
/// prompt + tokens): the coherence measure of steered text. Thread-safe; runs on the caller's thread, not the
/// scheduler's loop.
/// </summary>
public sealed class SequenceScorer(string plainGraphPath, ModelArchitecture architecture, EngineOptions options,
    SharedWeights? weights = null) : IDisposable
{
    private readonly HookedDecoder _decoder = new(plainGraphPath, architecture,
        options with { ExecutionProvider = ExecutionProviderPreference.Cpu }, weights);

    /// <summary>log p(tokens[k] | prompt, tokens[..k]) for each k.</summary>
    public double[] LogProbs(IReadOnlyList<int> prompt, IReadOnlyList<int> tokens)
    {
        if (tokens.Count == 0) return [];
        int[] sequence = [.. prompt, .. tokens];
        using var state = _decoder.NewState();
        var logits = _decoder.Forward(state, sequence, null);
        var vocab = architecture.VocabSize;
        var result = new double[tokens.Count];
        for (var k = 0; k < tokens.Count; k++)
        {
            var row = logits.AsSpan((prompt.Count - 1 + k) * vocab, vocab);
            double max = double.NegativeInfinity, sum = 0;
            foreach (var v in row) max = Math.Max(max, v);
            foreach (var v in row) sum += Math.Exp(v - max);
            result[k] = row[tokens[k]] - max - Math.Log(sum);
        }
        return result;
    }

    /// <summary>exp(−mean log p); NaN for no tokens.</summary>
    public double Perplexity(IReadOnlyList<int> prompt, IReadOnlyList<int> tokens) =>
        tokens.Count == 0 ? double.NaN : Math.Exp(-LogProbs(prompt, tokens).Average());

    public void Dispose() => _decoder.Dispose();
}
