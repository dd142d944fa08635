namespace FeatureFlow.Engine.Tests;

public class SamplerTests
{
    private static float[] Logits(params float[] probs) => probs.Select(p => MathF.Log(p)).ToArray();

    private static HashSet<int> Draws(SamplingOptions options, float[] probs, int n = 400)
    {
        var seen = new HashSet<int>();
        var sampler = new Sampler(options);
        for (var i = 0; i < n; i++) seen.Add(sampler.Sample(Logits(probs)));
        return seen;
    }

    [Fact]
    public void Greedy_takes_the_first_maximum() =>
        Assert.Equal(1, new Sampler(new SamplingOptions { Temperature = 0f }).Sample([0f, 3f, 3f, -1f]));

    [Fact]
    public void Plain_sampling_reaches_every_token() =>
        Assert.Equal([0, 1, 2], Draws(new SamplingOptions { Seed = 3 }, [0.5f, 0.3f, 0.2f]).Order());

    [Fact]
    public void Top_p_keeps_the_smallest_set_whose_mass_passes_p() =>
        Assert.Equal([0, 1], Draws(new SamplingOptions { Seed = 3, TopP = 0.6f }, [0.5f, 0.3f, 0.2f]).Order());

    [Fact]
    public void Top_k_keeps_the_k_most_likely() =>
        Assert.Equal([0, 2], Draws(new SamplingOptions { Seed = 3, TopK = 2 }, [0.4f, 0.2f, 0.3f, 0.1f]).Order());

    [Fact]
    public void Draws_follow_the_distribution()
    {
        var sampler = new Sampler(new SamplingOptions { Seed = 11 });
        var counts = new int[2];
        for (var i = 0; i < 20000; i++) counts[sampler.Sample(Logits(0.8f, 0.2f))]++;
        Assert.InRange(counts[0] / 20000.0, 0.78, 0.82);
    }
}
