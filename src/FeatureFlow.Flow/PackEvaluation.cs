using System.Text.RegularExpressions;
using FeatureFlow.Engine;
using FeatureFlow.Models;
using FeatureFlow.Sae;
using FeatureFlow.Steering;
using FeatureFlow.Steering.Packs;

namespace FeatureFlow.Flow;

public sealed record PackEvaluationOptions
{
    public int Seeds { get; init; } = 32;
    public int Tokens { get; init; } = 64;
    public float Temperature { get; init; } = 1f;
    public float TopP { get; init; } = 0.9f;
    /// <summary>null: the pack's default strength.</summary>
    public float? Strength { get; init; }
}

/// <summary>Mean and 95% confidence half-width (normal approximation) over seeds.</summary>
public sealed record Estimate(double Mean, double HalfWidth)
{
    public static Estimate Of(IReadOnlyList<double> values)
    {
        var mean = values.Average();
        var sd = values.Count > 1 ? Math.Sqrt(values.Sum(v => (v - mean) * (v - mean)) / (values.Count - 1)) : 0;
        return new Estimate(mean, 1.96 * sd / Math.Sqrt(values.Count));
    }

    public override string ToString() => FormattableString.Invariant($"{Mean:F3} ± {HalfWidth:F3}");
}

/// <summary>One arm (unsteered or steered) of a pack evaluation.</summary>
public sealed record ArmResult(Estimate FeatureActivation, Estimate ThemeWordRate, Estimate Perplexity, string Example);

public sealed record PackEvaluationResult(string Pack, float Strength, string SeedFeature, ArmResult Unsteered, ArmResult Steered, PackEvaluationOptions Options);

/// <summary>
/// Measures a pack without an external judge (feature-flow-method.md): per seed, the same sampling with
/// and without the pack; topic = the seed feature's mean SAE activation on the generated tokens and the
/// rate of the pack's theme words; coherence = perplexity of the text under the unsteered model.
/// </summary>
public static partial class PackEvaluation
{
    public static PackEvaluationResult Evaluate(GenerationEngine engine, SteeringPack pack, SaeSet saes, PackEvaluationOptions options)
    {
        var strength = options.Strength ?? pack.Metadata.DefaultStrength;
        var seed = FeatureId.Parse(pack.Metadata.Seed.Split(',')[0]);
        var sae = saes.Get(seed.Site, "seed");
        // Scoring reads the seed feature's site from the unsteered reference graph, one sequence at a time.
        using var reader = new HookedDecoder(engine.Folder.HookedGraphPath, engine.Architecture, engine.Options);
        var arms = new[] { SteeringSpec.None, new SteeringSpec(pack.At(strength, SteeringScope.All, "pack").ToArray()) }
            .Select(spec => RunArm(engine, reader, spec, sae, seed.Index, pack.Metadata.ThemeWords, options))
            .ToArray();
        return new PackEvaluationResult(pack.Name, strength, seed.ToString(), arms[0], arms[1], options);
    }

    private static ArmResult RunArm(GenerationEngine engine, HookedDecoder reader, SteeringSpec spec, SparseAutoencoder sae, int feature,
        IReadOnlyList<string> themeWords, PackEvaluationOptions options)
    {
        var activation = new List<double>();
        var themeRate = new List<double>();
        var perplexity = new List<double>();
        // All seeds run at once as rows of one batch; each gives exactly the tokens it would give alone.
        var generations = Enumerable.Range(0, options.Seeds).Select(s => Generate(engine, new GenerationRequest
        {
            PromptIds = [engine.Tokenizer.BosId],
            MaxTokens = options.Tokens,
            Sampling = new SamplingOptions { Temperature = options.Temperature, TopP = options.TopP, Seed = (ulong)s + 1 },
            Steering = spec,
        })).ToArray();
        Task.WaitAll(generations);
        var example = generations[0].Result.Text;
        foreach (var (ids, text) in generations.Select(g => g.Result))
        {
            var (meanActivation, ppl) = Score(reader, ids, sae, feature);
            activation.Add(meanActivation);
            perplexity.Add(ppl);
            var words = WordPattern().Matches(text).Select(m => m.Value.ToLowerInvariant()).ToArray();
            themeRate.Add(words.Length == 0 ? 0 : words.Count(w => themeWords.Contains(w, StringComparer.OrdinalIgnoreCase)) / (double)words.Length);
        }
        return new ArmResult(Estimate.Of(activation), Estimate.Of(themeRate), Estimate.Of(perplexity), example);
    }

    private static async Task<(List<int> Ids, string Text)> Generate(GenerationEngine engine, GenerationRequest request)
    {
        var ids = new List<int>();
        var text = new System.Text.StringBuilder();
        await foreach (var u in engine.GenerateAsync(request).ConfigureAwait(false))
        {
            ids.AddRange(u.TokenIds);
            text.Append(u.Text);
        }
        return (ids, text.ToString());
    }

    /// <summary>Runs BOS + tokens through the unsteered model: the feature's mean activation over the generated positions, and their perplexity.</summary>
    private static (double MeanActivation, double Perplexity) Score(HookedDecoder decoder, List<int> generated, SparseAutoencoder sae, int feature)
    {
        if (generated.Count == 0) return (0, double.NaN);
        int[] sequence = [1, .. generated];
        using var state = decoder.NewState();
        using var identity = decoder.Bind(new SteeringTensors(decoder.SteeringShape!));
        var output = decoder.Run(state, sequence, identity, [sae.Site]);
        int d = decoder.Architecture.DModel, vocab = decoder.Architecture.VocabSize;
        var z = new float[sae.DSae];
        var scratch = new float[d];
        double activation = 0, nll = 0;
        for (var p = 1; p < sequence.Length; p++)
        {
            sae.Encode(output.Sites[0].AsSpan(p * d, d), z, scratch);
            activation += z[feature];
            var logits = output.Logits.AsSpan((p - 1) * vocab, vocab);
            var max = logits[0];
            foreach (var v in logits) max = Math.Max(max, v);
            double sum = 0;
            foreach (var v in logits) sum += Math.Exp(v - max);
            nll -= logits[sequence[p]] - max - Math.Log(sum);
        }
        var n = sequence.Length - 1;
        return (activation / n, Math.Exp(nll / n));
    }

    [GeneratedRegex(@"[A-Za-z']+")]
    private static partial Regex WordPattern();
}
