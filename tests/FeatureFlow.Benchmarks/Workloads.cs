using FeatureFlow.Models;
using FeatureFlow.Steering;

namespace FeatureFlow.Benchmarks;

/// <summary>The prompt and the steering specs the engine comparison runs.</summary>
public static class Workloads
{
    /// <summary>
    /// A children's story written for this benchmark in the style the model was trained on, so the prompt is
    /// text the tokenizer and the model see in practice rather than a repeated word.
    /// </summary>
    public const string Story =
        "Once upon a time, there was a little girl named Mia. She lived in a small house near a big green park. " +
        "Every morning, Mia put on her red shoes and ran to the park with her dog, Max. Max liked to chase the " +
        "ducks by the pond, and Mia liked to sit under the old tree and watch the clouds. One day, the sky was " +
        "dark and the wind was very strong. Mia saw a small bird on the ground. The bird could not fly because " +
        "its wing was hurt. Mia felt sad for the bird. She picked it up very gently and put it in her hat. " +
        "\"Don't be scared, little bird,\" she said. \"I will help you.\" She took the bird home and gave it some " +
        "water and a few seeds. Her mom smiled and said, \"You are very kind, Mia.\"";

    /// <summary>
    /// BOS and <paramref name="length"/> − 1 consecutive story tokens: the first window (stepping 3 tokens) whose
    /// greedy continuation by <paramref name="generatedCount"/> runs <paramref name="maxTokens"/> tokens without the
    /// story ending, so every engine decodes the full length instead of stopping at a story's EOS or BOS.
    /// </summary>
    public static async Task<int[]> PromptAsync(int[] storyIds, int length, int maxTokens,
        Func<int[], Task<int>> generatedCount)
    {
        for (var offset = 1; offset + length - 1 <= storyIds.Length; offset += 3)
        {
            int[] prompt = [storyIds[0], .. storyIds[offset..(offset + length - 1)]];
            if (await generatedCount(prompt) == maxTokens) return prompt;
        }
        throw new InvalidOperationException($"no {length}-token window of the story continues for {maxTokens} tokens");
    }

    /// <summary>
    /// The heaviest spec the graph takes: at every site an add term and all rescale/clamp slots filled, alternating
    /// rescale and clamp. Vectors are small and random so the work is all there while the text barely moves (the
    /// run still generates its full length); the graph's cost does not depend on the values.
    /// </summary>
    public static SteeringSpec Heavy(SteeringShape shape, int seed = 11)
    {
        var random = new Random(seed);
        float[] Vector(float scale) =>
            Enumerable.Range(0, shape.DModel).Select(_ => scale * (float)(random.NextDouble() * 2 - 1)).ToArray();
        var terms = new List<SteeringTerm>();
        foreach (var site in Site.All(shape.Layers))
        {
            terms.Add(new SteeringTerm(site, SteeringOperation.Add, 0.01f, new FeatureVector(Vector(1f))));
            for (var slot = 0; slot < shape.SlotsPerSite; slot++)
            {
                var feature = new FeatureVector(Vector(0.01f), Vector(0.1f), EncoderBias: 0.01f);
                terms.Add(slot % 2 == 0
                    ? new SteeringTerm(site, SteeringOperation.Rescale, 0.5f, feature)
                    : new SteeringTerm(site, SteeringOperation.Clamp, 0.1f, feature));
            }
        }
        return new SteeringSpec(terms);
    }
}
