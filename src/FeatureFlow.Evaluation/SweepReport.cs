using System.Globalization;
using System.Text;

namespace FeatureFlow.Evaluation;

/// <summary>
/// The sweep's <c>report.md</c>: command, setup, score definitions, best cells, charts, the full table, examples.
/// </summary>
public static class SweepReport
{
    public const string File = "report.md";

    /// <summary>Writes <c>summary.csv</c>, the charts and <c>report.md</c>; returns every output file's name.</summary>
    public static IReadOnlyList<string> WriteAll(string directory, SweepPlan plan, SweepResult result, string command,
        TimeSpan elapsed)
    {
        var cells = SweepSummary.Of(result.Rows);
        SweepSummary.WriteCsv(Path.Combine(directory, SweepSummary.File), cells);
        var charts = SweepCharts.Write(directory, cells);
        Write(directory, plan, result, cells, charts, command, elapsed);
        return [SweepRunner.RowsFile, SweepRunner.SettingsFile, SweepSummary.File, .. charts, File];
    }

    public static string Write(string directory, SweepPlan plan, SweepResult result, IReadOnlyList<CellSummary> cells,
        IReadOnlyList<string> charts, string command, TimeSpan elapsed)
    {
        var o = plan.Options;
        var sb = new StringBuilder();
        void Line(FormattableString s) => sb.AppendLine(s.ToString(CultureInfo.InvariantCulture));
        Line($"# Steering sweep: {plan.Subject}");
        sb.AppendLine();
        sb.AppendLine("```");
        sb.AppendLine(command);
        sb.AppendLine("```");
        sb.AppendLine();
        var goal = plan.Goal.ToString().ToLowerInvariant();
        Line($"- seed feature `{plan.SeedFeature}` ({plan.SeedFeature.Short}); goal: {goal}");
        foreach (var (key, value) in plan.Settings) Line($"- {key}: `{value}`");
        if (plan.Graph is { } g)
        {
            var nodes = g.Nodes.Select(n =>
                FormattableString.Invariant($"{n.Feature.Short} ({n.Role}, {n.Score:F2})"));
            Line($"- flow graph: layers {g.LStart}..{g.LEnd}, nodes {string.Join(", ", nodes)}");
        }
        Line($"- prompts: {string.Join(" · ", o.Prompts.Select(p => p.Length == 0 ? "BOS" : $"\"{Escape(p)}\""))}");
        Line($"- seeds 1..{o.Seeds}, {o.Tokens} tokens, temperature {o.Temperature}, top-p {o.TopP}");
        Line($"- {result.Rows.Count} rows in the grid: {result.Generated} generated in this run, {result.Skipped} done before");
        Line($"- wall time {elapsed.TotalSeconds:F1} s");
        sb.AppendLine();
        sb.AppendLine("## Scores");
        sb.AppendLine();
        sb.AppendLine("Per generation of n tokens (`rows.csv`), with the model unsteered when scoring:");
        sb.AppendLine();
        sb.AppendLine("- **perplexity** = exp(−(1/n)·Σ log p(t_k | prompt, t_<k)) under the unsteered model");
        sb.AppendLine("  (plain graph).");
        sb.AppendLine("- **activation** = the seed feature's mean SAE activation at the generated tokens' positions,");
        sb.AppendLine("  read from the unsteered hooked graph over prompt + generated text (the text's own topic, not");
        sb.AppendLine("  the steering's push); **active share** = share of those tokens where it is > 0.");
        sb.AppendLine("- **theme rate** = theme words / words (words = runs of `[A-Za-z']`, case-insensitive).");
        var measure = plan.Behaviour == BehaviourMeasure.ThemeWords ? "theme rate" : "active share";
        var rule = plan.Goal == SteeringGoal.Promote
            ? "promotion, B = x."
            : "suppression, B = clamp(1 − x/x₀, 0, 1), x₀ = the prompt's unsteered mean " +
              "(x₀ = 0: B = 1 if x = 0, else 0).";
        Line($"- **behaviour** B on x = {measure}: {rule}");
        sb.AppendLine("- **coherence** C = min(1, ppl₀/ppl) = exp(−max(0, ln ppl − ln ppl₀)), ppl₀ = the prompt's");
        sb.AppendLine("  unsteered geometric-mean perplexity; C = 0 for no tokens or when the logits became");
        sb.AppendLine("  non-finite.");
        sb.AppendLine("- **combined** = B·C. Judge score (if a judge was used) = (topic/5)·(coherence/5), or");
        sb.AppendLine("  (1 − topic/5)·(coherence/5) for suppression.");
        sb.AppendLine();
        sb.AppendLine("Each cell pools its prompts and seeds (`summary.csv`): mean ± 95% Student-t interval t·sd/√n.");
        sb.AppendLine();
        sb.AppendLine("## Best cell per mode");
        sb.AppendLine();
        Table(sb, [.. cells.Where(c => c.Cell.Mode == SweepArm.Unsteered), .. SweepSummary.BestPerMode(cells)]);
        sb.AppendLine();
        sb.AppendLine("## Charts");
        sb.AppendLine();
        foreach (var chart in charts) Line($"![{Path.GetFileNameWithoutExtension(chart)}]({chart})");
        sb.AppendLine();
        sb.AppendLine("## All cells");
        sb.AppendLine();
        Table(sb, cells);
        sb.AppendLine();
        sb.AppendLine("## Examples (first prompt, seed 1)");
        sb.AppendLine();
        var shown = cells.Where(c => c.Cell.Mode == SweepArm.Unsteered).Concat(SweepSummary.BestPerMode(cells));
        foreach (var c in shown)
            if (result.Rows.FirstOrDefault(r => r.Cell == c.Cell && r.Seed == 1 && r.Prompt == o.Prompts[0]) is { } row)
                Line($"- {c.Label}: \"{Escape(row.Prompt + row.Text)}\"");
        var path = Path.Combine(directory, File);
        System.IO.File.WriteAllText(path, sb.ToString());
        return path;
    }

    private static void Table(StringBuilder sb, IEnumerable<CellSummary> cells)
    {
        var judged = cells.Any(c => c.JudgeScore.N > 0);
        sb.AppendLine("| cell | n | activation | active share | theme rate | perplexity | behaviour | coherence | " +
                      "combined |" + (judged ? " judge |" : ""));
        sb.AppendLine("|---|---:|---|---|---|---|---|---|---|" + (judged ? "---|" : ""));
        foreach (var c in cells)
        {
            var judge = judged ? $" {c.JudgeScore} |" : "";
            sb.AppendLine(CultureInfo.InvariantCulture, $"| {c.Label} | {c.N} | {c.Activation} | {c.ActiveShare} | " +
                $"{c.ThemeRate} | {c.Perplexity} | {c.Behaviour} | {c.Coherence} | {c.Combined} |{judge}");
        }
    }

    private static string Escape(string s) =>
        s.Replace("\n", " ", StringComparison.Ordinal).Replace("|", "\\|", StringComparison.Ordinal);
}
