using FeatureFlow.Experiments;
using MathNet.Numerics.Distributions;

namespace FeatureFlow.Experiments.Tests;

public class StatisticsTests
{
    [Fact]
    public void Mean_interval_matches_a_hand_computation()
    {
        double[] x = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        // mean = 55 / 10 = 5.5; Σ(x − 5.5)² = 2 · (4.5² + 3.5² + 2.5² + 1.5² + 0.5²) = 82.5;
        // s² = 82.5 / 9 = 9.1667, s = 3.02765, se = s / √10 = 0.957427;
        // t(0.975, 9) = 2.262 (printed t tables); half width = 2.262 · 0.957427 = 2.16570.
        var m = Statistics.Mean(x);
        Assert.Equal(10, m.N);
        Assert.Equal(5.5, m.Mean, 12);
        // Tolerance covers the table's rounding of t (2.2621572 → 2.262).
        Assert.Equal(5.5 - 2.16570, m.Low, 1e-3);
        Assert.Equal(5.5 + 2.16570, m.High, 1e-3);
    }

    [Fact]
    public void Mean_interval_is_nan_below_two_observations()
    {
        var one = Statistics.Mean([4.0]);
        Assert.Equal((1L, 4.0), (one.N, one.Mean));
        Assert.True(double.IsNaN(one.Low) && double.IsNaN(one.High));
        var none = Statistics.Mean([]);
        Assert.Equal(0, none.N);
        Assert.True(double.IsNaN(none.Mean) && double.IsNaN(none.Low));
    }

    /// <summary>
    /// R's sleep data (Cushny and Peebles 1905, as in R's datasets::sleep). R's documented
    /// <c>t.test(extra ~ group, data = sleep)</c> prints: t = -1.8608, df = 17.776, p-value = 0.07939,
    /// 95 percent confidence interval -3.3654832 0.2054832, means 0.75 and 2.33.
    /// </summary>
    [Fact]
    public void Welch_reproduces_the_textbook_sleep_example()
    {
        double[] group1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0];
        double[] group2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4];
        var d = Statistics.Welch(group1, group2);
        Assert.Equal(0.75 - 2.33, d.Diff, 12);
        // Tolerances: half a unit in the last digit R printed.
        Assert.Equal(17.776, d.Df, 5e-4);
        Assert.Equal(0.07939, d.PValue, 5e-6);
        Assert.Equal(-3.3654832, d.Low, 5e-8);
        Assert.Equal(0.2054832, d.High, 5e-8);
        Assert.Equal(-1.8608, d.Diff / ((d.High - d.Diff) / StudentT.InvCDF(0, 1, d.Df, 0.975)), 5e-5);
    }

    [Fact]
    public void Welch_matches_the_formula_on_unequal_samples()
    {
        double[] arm = [12.1, 14.3, 11.8, 15.2, 13.9, 12.7, 16.1];
        double[] control = [10.2, 11.9, 10.8, 12.5, 9.7, 11.1, 10.4, 12.0, 11.3, 10.9, 11.6, 10.1];
        static (double Mean, double Var) MeanVar(double[] v)
        {
            var mean = v.Sum() / v.Length;
            return (mean, v.Sum(x => (x - mean) * (x - mean)) / (v.Length - 1));
        }
        var (ma, sa) = MeanVar(arm);
        var (mc, sc) = MeanVar(control);
        var (qa, qc) = (sa / arm.Length, sc / control.Length);
        // Welch–Satterthwaite: ν = (q₁ + q₂)² / (q₁²/(n₁−1) + q₂²/(n₂−1)) with qᵢ = sᵢ²/nᵢ.
        var df = (qa + qc) * (qa + qc) / (qa * qa / (arm.Length - 1) + qc * qc / (control.Length - 1));
        var se = Math.Sqrt(qa + qc);
        var t = (ma - mc) / se;
        var p = 2 * (1 - StudentT.CDF(0, 1, df, Math.Abs(t)));
        var half = StudentT.InvCDF(0, 1, df, 0.975) * se;

        var d = Statistics.Welch(arm, control);
        Assert.Equal(ma - mc, d.Diff, 12);
        Assert.Equal(df, d.Df, 9);
        Assert.Equal(p, d.PValue, 9);
        Assert.Equal(ma - mc - half, d.Low, 9);
        Assert.Equal(ma - mc + half, d.High, 9);
        Assert.True(d.PValue < 0.01, $"the arm is clearly higher, p = {d.PValue}");
    }

    [Fact]
    public void Welch_is_nan_when_a_side_has_under_two_observations()
    {
        var d = Statistics.Welch([1.0], [1.0, 2.0, 3.0]);
        Assert.Equal(-1, d.Diff, 12);
        Assert.True(double.IsNaN(d.Low) && double.IsNaN(d.PValue));
        Assert.True(double.IsNaN(Statistics.Welch([], [1.0, 2.0]).Diff));
    }

    [Fact]
    public void Welch_on_constant_samples_reports_the_exact_difference()
    {
        var same = Statistics.Welch([1.0, 1.0, 1.0], [1.0, 1.0]);
        Assert.Equal((0.0, 1.0), (same.Diff, same.PValue));
        var apart = Statistics.Welch([1.0, 1.0, 1.0], [0.0, 0.0]);
        Assert.Equal((1.0, 1.0, 1.0, 0.0), (apart.Diff, apart.Low, apart.High, apart.PValue));
    }

    [Fact]
    public void Moments_from_adds_merges_and_lists_agree()
    {
        double[] x = [3.5, -1.25, 8, 0, 2.75, 6.5, -4];
        var all = Moments.Of(x);
        var merged = Moments.Of(x[..3]).Merge(Moments.Of(x[3..]));
        Assert.Equal(all.N, merged.N);
        Assert.Equal(all.Mean, merged.Mean, 12);
        Assert.Equal(all.M2, merged.M2, 10);
        var mean = x.Average();
        Assert.Equal(x.Sum(v => (v - mean) * (v - mean)) / (x.Length - 1), all.Variance, 10);
        Assert.Equal(Statistics.Mean(x), Statistics.Mean(all));
    }

    [Fact]
    public void Moments_keep_a_small_spread_around_a_large_mean()
    {
        // Σx² − (Σx)²/n loses every digit here (1e18-sized terms); the deviation form keeps s² = 0.01.
        double[] x = [1e9 + 0.1, 1e9 + 0.2, 1e9 + 0.3];
        Assert.Equal(0.01, Moments.Of(x).Variance, 6);
    }
}
