using FeatureFlow.Cli;
using FeatureFlow.Evaluation;

namespace FeatureFlow.Evaluation.Tests;

/// <summary><c>featureflow eval sweep</c> end to end, in-process, on a tiny grid.</summary>
public sealed class CliSweepTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("featureflow-eval-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    private static async Task<(int Exit, string Out, string Err)> Run(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        var exit = await CliApp.Build(output, error).Parse(args).InvokeAsync();
        return (exit, output.ToString(), error.ToString());
    }

    [Fact]
    public async Task Eval_sweep_writes_rows_summary_charts_and_a_report()
    {
        var prompts = Path.Combine(_dir, "prompts.txt");
        File.WriteAllText(prompts, "# a BOS-only prompt and a story opening\n<bos>\n\nOnce upon a time,\n");
        var outDir = Path.Combine(_dir, "out");
        var (exit, stdout, stderr) = await Run("eval", "sweep", "--seed-feature", "3/res/145", "--cut", "0.5",
            "--module-threshold", "0.5", "--modes", "single,baseline", "--layers", "3", "--strengths", "0,1",
            "--seeds", "2", "--tokens", "8", "--prompts", prompts, "--theme-words", "happy,glad",
            "--out", outDir, "--model", RepoPaths.Stories260kModel);
        Assert.True(exit == 0, stderr);
        Assert.Contains("20 generations run, 0 already done", stdout);
        Assert.Contains("best single:", stdout);

        Assert.Equal(21, Csv.Parse(File.ReadAllText(Path.Combine(outDir, "rows.csv")), out _).Count);
        var summary = File.ReadAllLines(Path.Combine(outDir, "summary.csv"));
        Assert.Equal(6, summary.Length); // header, unsteered, 2 cells × 2 strengths
        Assert.StartsWith("mode,layer,schedule,strength,n,tokens_mean,tokens_ci95,", summary[0]);
        Assert.StartsWith("unsteered,,,0,4,", summary[1]);
        string[] charts = ["score_vs_strength.png", "behaviour_vs_strength.png", "perplexity_vs_strength.png", "best_layer.png"];
        foreach (var png in charts)
            Assert.Equal([0x89, (byte)'P', (byte)'N', (byte)'G'], File.ReadAllBytes(Path.Combine(outDir, png)).Take(4));
        var report = File.ReadAllText(Path.Combine(outDir, "report.md"));
        Assert.Contains("featureflow eval sweep --seed-feature 3/res/145", report);
        Assert.Contains("![score_vs_strength](score_vs_strength.png)", report);
        Assert.Contains("| single L3 constant ×1 | 4 |", report);

        (exit, stdout, stderr) = await Run("eval", "sweep", "--seed-feature", "3/res/145", "--cut", "0.5",
            "--module-threshold", "0.5", "--modes", "single,baseline", "--layers", "3", "--strengths", "0,1",
            "--seeds", "2", "--tokens", "8", "--prompts", prompts, "--theme-words", "happy,glad",
            "--out", outDir, "--model", RepoPaths.Stories260kModel);
        Assert.True(exit == 0, stderr);
        Assert.Contains("0 generations run, 20 already done", stdout);
    }

    [Theory]
    [InlineData("eval sweep", "give --seed-feature")]
    [InlineData("eval sweep --seed-feature 3/res/145 --modes sideways", "--modes: 'sideways'")]
    [InlineData("eval sweep --pack nope", "nope.pack.safetensors")]
    [InlineData("eval sweep --seed-feature 3/res/145 --theme-words happy --judge-url http://h:9", "needs --judge-model")]
    public async Task Bad_input_is_one_clear_line_and_exit_code_1(string args, string expected)
    {
        var (exit, _, stderr) =
            await Run([.. args.Split(' '), "--out", Path.Combine(_dir, "bad"), "--model", RepoPaths.Stories260kModel]);
        Assert.Equal(1, exit);
        Assert.Contains(expected, stderr);
    }
}
