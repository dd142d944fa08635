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
    /// <summary>Prompt texts, each run with every seed; the empty string is BOS alone.</summary>
    public IReadOnlyList<string> Prompts { get; init; } = [""];
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

/// <summary>
/// One arm (unsteered or steered) of a pack evaluation over every prompt and seed; the example is the first prompt's
/// seed 1.
/// </summary>
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
        // Every prompt and seed at once, as rows of one batch; each gives exactly the tokens it would give alone.
        var runs = options.Prompts.Select(engine.EncodePrompt)
            .SelectMany(prompt => Enumerable.Range(1, options.Seeds).Select(seed => (Prompt: prompt,
                Generation: Generate(engine, new GenerationRequest
                {
                    PromptIds = prompt,
                    MaxTokens = options.Tokens,
                    Sampling = new SamplingOptions
                    {
                        Temperature = options.Temperature, TopP = options.TopP, Seed = (ulong)seed,
                    },
                    Steering = spec,
                }))))
            .ToArray();
        Task.WaitAll(runs.Select(r => r.Generation));
        var example = runs[0].Generation.Result.Text;
        foreach (var (prompt, generation) in runs)
        {
            var (ids, text) = generation.Result;
            var (meanActivation, ppl) = Score(reader, prompt, ids, sae, feature);
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

    /// <summary>
    /// Runs prompt + tokens through the unsteered model: the feature's mean activation over the generated positions,
    /// and their perplexity.
    /// </summary>
    private static (double MeanActivation, double Perplexity) Score(HookedDecoder decoder, int[] prompt,
        List<int> generated, SparseAutoencoder sae, int feature)
    {
        if (generated.Count == 0) return (0, double.NaN);
        int[] sequence = [.. prompt, .. generated];
        using var state = decoder.NewState();
        using var identity = decoder.Bind(new SteeringTensors(decoder.SteeringShape!));
        var output = decoder.Run(state, sequence, identity, [sae.Site]);
        int d = decoder.Architecture.DModel, vocab = decoder.Architecture.VocabSize;
        var z = new float[sae.DSae];
        var scratch = new float[d];
        double activation = 0, nll = 0;
        for (var p = prompt.Length; p < sequence.Length; p++)
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
        var n = generated.Count;
        return (activation / n, Math.Exp(nll / n));
    }

    [GeneratedRegex(@"[A-Za-z']+")]
    private static partial Regex WordPattern();
}
