using FeatureFlow.Engine;
using FeatureFlow.Sae;
using FeatureFlow.Steering;

namespace FeatureFlow.Evaluation;

/// <summary>The raw judge-free measures of one generation (definitions in <see cref="SteeringScores"/>).</summary>
public sealed record GenerationScore(
    int Tokens, double Activation, double ActiveShare, double ThemeRate, double Perplexity);

/// <summary>
/// Scores generated text under the <em>unsteered</em> model: perplexity from the engine's
/// <see cref="SequenceScorer"/> (plain graph, as Compare's summary does), and the seed feature's activation
/// re-read from the hooked graph with no steering over prompt + generated tokens. The steered run's own site
/// values are not used: at a steered site they contain the added direction, so a promoted feature would read
/// high even if the text did not change; re-reading the text measures whether the text itself carries the
/// feature, which is the paper's behavioural question (topic presence in the generated text).
/// Thread-safe: each call runs its own decoder state.
/// </summary>
public sealed class GenerationScorer : IDisposable
{
    private readonly SequenceScorer _perplexity;
    private readonly HookedDecoder _reader;
    private readonly SparseAutoencoder _sae;
    private readonly int _feature;

    public GenerationScorer(GenerationEngine engine, SparseAutoencoder sae, int feature)
    {
        sae.CheckFeature(feature, "seed feature");
        _perplexity = engine.Scorer;
        _reader = new HookedDecoder(engine.Folder.HookedGraphPath, engine.Architecture,
            engine.Options with { ExecutionProvider = ExecutionProviderPreference.Cpu });
        _sae = sae;
        _feature = feature;
    }

    public GenerationScore Score(IReadOnlyList<int> prompt, IReadOnlyList<int> generated, string text,
        IReadOnlyCollection<string> themeWords)
    {
        var theme = SteeringScores.ThemeWordRate(text, themeWords);
        if (generated.Count == 0) return new GenerationScore(0, double.NaN, double.NaN, theme, double.NaN);
        var (activation, share) = SteeringScores.FeatureActivation(SiteValues(prompt, generated), prompt.Count,
            generated.Count, _sae, _feature);
        return new GenerationScore(generated.Count, activation, share, theme, _perplexity.Perplexity(prompt, generated));
    }

    /// <summary>The seed site's unsteered values at every position of prompt + generated, [positions, d].</summary>
    public float[] SiteValues(IReadOnlyList<int> prompt, IReadOnlyList<int> generated)
    {
        int[] sequence = [.. prompt, .. generated];
        using var state = _reader.NewState();
        using var identity = _reader.Bind(new SteeringTensors(_reader.SteeringShape!));
        return _reader.Run(state, sequence, identity, [_sae.Site]).Sites[0];
    }

    public void Dispose() => _reader.Dispose();
}
