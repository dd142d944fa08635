using MathNet.Numerics.Distributions;

namespace FeatureFlow.Experiments;

/// <summary>
/// Count, mean and sum of squared deviations (Welford's M2): the sufficient statistics of a sample for a
/// t interval. Kept instead of (n, Σx, Σx²) because Σx² − (Σx)²/n cancels catastrophically when the spread is
/// small next to the mean (latencies, log-probabilities); M2 is updated from deviations and stays accurate.
/// </summary>
public readonly record struct Moments(long N, double Mean, double M2)
{
    public static Moments Empty => default;

    /// <summary>Sample variance (n − 1 denominator); NaN below two observations.</summary>
    public double Variance => N < 2 ? double.NaN : Math.Max(M2, 0) / (N - 1);

    public static Moments Of(IEnumerable<double> values)
    {
        ArgumentNullException.ThrowIfNull(values);
        var m = Empty;
        foreach (var v in values) m = m.Add(v);
        return m;
    }

    public Moments Add(double value)
    {
        var n = N + 1;
        var delta = value - Mean;
        var mean = Mean + delta / n;
        return new Moments(n, mean, M2 + delta * (value - mean));
    }

    /// <summary>Chan et al.'s pairwise combination: the moments of the union of two samples.</summary>
    public Moments Merge(Moments other)
    {
        if (other.N == 0) return this;
        if (N == 0) return other;
        var n = N + other.N;
        var delta = other.Mean - Mean;
        return new Moments(n, Mean + delta * other.N / n, M2 + other.M2 + delta * delta * N * other.N / n);
    }
}

/// <summary>A sample mean with its two-sided 95% Student-t interval; Low and High are NaN below two observations.
/// </summary>
public readonly record struct MeanInterval(long N, double Mean, double Low, double High);

/// <summary>
/// Mean of an arm minus mean of control with a 95% Welch interval, the two-sided Welch t-test p-value and the
/// Welch–Satterthwaite degrees of freedom. NaN where either side has fewer than two observations.
/// </summary>
public readonly record struct Difference(double Diff, double Low, double High, double PValue, double Df);

public static class Statistics
{
    public const double Confidence = 0.95;

    public static MeanInterval Mean(IReadOnlyList<double> values) => Mean(Moments.Of(values));

    public static MeanInterval Mean(Moments m)
    {
        if (m.N == 0) return new MeanInterval(0, double.NaN, double.NaN, double.NaN);
        if (m.N < 2) return new MeanInterval(m.N, m.Mean, double.NaN, double.NaN);
        var half = TQuantile(m.N - 1) * Math.Sqrt(m.Variance / m.N);
        return new MeanInterval(m.N, m.Mean, m.Mean - half, m.Mean + half);
    }

    public static Difference Welch(IReadOnlyList<double> arm, IReadOnlyList<double> control) =>
        Welch(Moments.Of(arm), Moments.Of(control));

    public static Difference Welch(Moments arm, Moments control)
    {
        var diff = arm.Mean - control.Mean;
        if (arm.N < 2 || control.N < 2)
            return new Difference(arm.N == 0 || control.N == 0 ? double.NaN : diff,
                double.NaN, double.NaN, double.NaN, double.NaN);
        var va = arm.Variance / arm.N;
        var vc = control.Variance / control.N;
        var se2 = va + vc;
        // Both samples constant: the t statistic is 0/0 or ±∞; report the exact difference rather than NaN
        // so a deterministic outcome (e.g. every reply passes a check in both arms) still reads sensibly.
        if (se2 == 0) return new Difference(diff, diff, diff, diff == 0 ? 1 : 0, double.NaN);
        var df = se2 * se2 / (va * va / (arm.N - 1) + vc * vc / (control.N - 1));
        var se = Math.Sqrt(se2);
        var half = TQuantile(df) * se;
        var p = 2 * StudentT.CDF(0, 1, df, -Math.Abs(diff / se));
        return new Difference(diff, diff - half, diff + half, Math.Min(p, 1), df);
    }

    private static double TQuantile(double df) => StudentT.InvCDF(0, 1, df, 1 - (1 - Confidence) / 2);
}
