using System.Globalization;
using System.Numerics.Tensors;

namespace FeatureFlow.Flow;

/// <summary>The three decoder pairs the flow map matches into R(L): R(L−1)→R(L), M(L)→R(L), A(L)→R(L).</summary>
public enum PredecessorKind { Resid, Mlp, Attn }

public sealed record ChanceLevelOptions
{
    /// <summary>Seed of the Gaussian matrices whose QR gives the rotations.</summary>
    public int Seed { get; init; } = 20250203;
    /// <summary>
    /// Rotated copies of each source decoder; their best-cosine samples are pooled (rotations × target
    /// features). Each one costs one more decoder match per pair.
    /// </summary>
    public int Rotations { get; init; } = 4;
    /// <summary>The percentile of the null that becomes the default threshold.</summary>
    public double Percentile { get; init; } = 99;
}

/// <summary>
/// The null of one pair: the best cosine of every target feature among a rotated source decoder, pooled
/// over the rotations. <see cref="Histogram"/> counts the samples in <see cref="FlowStatistics.Bins"/> bins
/// over [0, 1].
/// </summary>
public sealed record NullDistribution(double Mean, float Threshold, int[] Histogram);

/// <summary>
/// Chance level of top-1 decoder cosines. How high a best cosine among n other directions is by chance
/// depends on d_model and n (≈ 0.4 for 512 features in d = 64, ≈ 0.1 in d = 2304), so no absolute
/// threshold means the same at every width. The null matches the target decoder against randomly
/// rotated copies of the source decoder: a rotation keeps the source's own geometry (norms, mutual
/// cosines, clustering) but destroys any alignment with the target. The rotations are Haar-random
/// (QR of a Gaussian matrix with the signs of R's diagonal folded into Q), fixed by a seed, and
/// shared by all pairs of one width.
/// </summary>
public sealed class ChanceLevel
{
    private readonly float[][] _rotations;

    public ChanceLevel(int d, ChanceLevelOptions options)
    {
        if (options.Rotations < 1) throw new ArgumentException("the chance level needs at least one rotation");
        if (options.Percentile is <= 0 or >= 100)
            throw new ArgumentException("the chance-level percentile must lie in (0, 100)");
        D = d;
        Options = options;
        _rotations = Enumerable.Range(0, options.Rotations).Select(r => RandomRotation(d, options.Seed + r)).ToArray();
    }

    public int D { get; }
    public ChanceLevelOptions Options { get; }
    public IReadOnlyList<float[]> Rotations => _rotations;

    /// <summary>
    /// The null of best cosines of <paramref name="targets"/> [m, d] among <paramref name="sources"/> [n, d],
    /// through the same <see cref="CosineMatcher"/> as the flow map.
    /// </summary>
    public NullDistribution Estimate(CosineMatcher matcher, ReadOnlySpan<float> targets, ReadOnlySpan<float> sources) =>
        Summarise(Samples(matcher, targets, sources), Options.Percentile);

    /// <summary>The pooled null samples: for each rotation, every target's best score.</summary>
    private float[] Samples(CosineMatcher matcher, ReadOnlySpan<float> targets, ReadOnlySpan<float> sources)
    {
        var m = targets.Length / D;
        var samples = new float[m * _rotations.Length];
        for (var r = 0; r < _rotations.Length; r++)
            matcher.Match(targets, Rotate(sources, D, _rotations[r]), D).Backward.Score.CopyTo(samples, r * m);
        return samples;
    }

    public static NullDistribution Summarise(ReadOnlySpan<float> samples, double percentile)
    {
        var histogram = new int[FlowStatistics.Bins];
        double sum = 0;
        foreach (var s in samples)
        {
            sum += s;
            histogram[FlowStatistics.Bin(s)]++;
        }
        return new NullDistribution(sum / samples.Length, (float)Percentile(samples, percentile), histogram);
    }

    /// <summary>The p-th percentile, interpolating linearly between order statistics (NumPy's default).</summary>
    public static double Percentile(ReadOnlySpan<float> values, double p)
    {
        if (values.IsEmpty) throw new ArgumentException("no values");
        var sorted = values.ToArray();
        Array.Sort(sorted);
        var rank = p / 100 * (sorted.Length - 1);
        var low = (int)Math.Floor(rank);
        var high = Math.Min(low + 1, sorted.Length - 1);
        return sorted[low] + (rank - low) * ((double)sorted[high] - sorted[low]);
    }

    /// <summary>
    /// A Haar-random orthogonal d×d matrix, row-major: Householder QR of a standard Gaussian matrix in double.
    /// </summary>
    public static float[] RandomRotation(int d, int seed)
    {
        var rng = new Random(seed);
        var a = new double[d * d];
        for (var i = 0; i < a.Length; i += 2)
        {
            // Box–Muller: two independent standard normals per pair of uniforms.
            var radius = Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble()));
            var angle = 2 * Math.PI * rng.NextDouble();
            a[i] = radius * Math.Cos(angle);
            if (i + 1 < a.Length) a[i + 1] = radius * Math.Sin(angle);
        }
        var q = new double[d * d];
        for (var i = 0; i < d; i++) q[i * d + i] = 1;
        var v = new double[d];
        for (var k = 0; k < d; k++)
        {
            double norm = 0;
            for (var i = k; i < d; i++) norm += a[i * d + k] * a[i * d + k];
            norm = Math.Sqrt(norm);
            // R's diagonal entry is −sign(x₀)·‖x‖; choosing the sign away from x₀ avoids cancellation.
            var diagonal = a[k * d + k] >= 0 ? -norm : norm;
            double vNorm = 0;
            for (var i = k; i < d; i++)
            {
                v[i] = a[i * d + k] - (i == k ? diagonal : 0);
                vNorm += v[i] * v[i];
            }
            if (vNorm > 0)
            {
                // A ← H·A on rows k.., Q ← Q·H on columns k.., with H = I − 2vvᵀ/‖v‖².
                for (var j = k; j < d; j++)
                {
                    double dot = 0;
                    for (var i = k; i < d; i++) dot += v[i] * a[i * d + j];
                    var f = 2 * dot / vNorm;
                    for (var i = k; i < d; i++) a[i * d + j] -= f * v[i];
                }
                for (var i = 0; i < d; i++)
                {
                    double dot = 0;
                    for (var j = k; j < d; j++) dot += q[i * d + j] * v[j];
                    var f = 2 * dot / vNorm;
                    for (var j = k; j < d; j++) q[i * d + j] -= f * v[j];
                }
            }
            // Q·diag(sign(R_kk)) is Haar-distributed; plain Householder QR is not.
            if (a[k * d + k] < 0)
                for (var i = 0; i < d; i++) q[i * d + k] = -q[i * d + k];
        }
        return q.Select(x => (float)x).ToArray();
    }

    /// <summary>rows · Q for rows [n, d] and Q [d, d]: every row rotated, norms and mutual cosines kept.</summary>
    public static float[] Rotate(ReadOnlySpan<float> rows, int d, float[] rotation)
    {
        var source = rows.ToArray();
        var result = new float[source.Length];
        Parallel.For(0, source.Length / d, r =>
        {
            var output = result.AsSpan(r * d, d);
            for (var k = 0; k < d; k++)
                TensorPrimitives.MultiplyAdd(rotation.AsSpan(k * d, d), source[r * d + k], output, output);
        });
        return result;
    }

    /// <summary>Metadata key prefix of the null of one pair in a flow map file.</summary>
    public static string Key(int layer, PredecessorKind kind) =>
        string.Create(CultureInfo.InvariantCulture, $"chance.{layer}.{kind.ToString().ToLowerInvariant()}");
}
