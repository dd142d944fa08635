using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using FeatureFlow.Flow;

namespace FeatureFlow.Evaluation;

/// <summary>How a results document was produced: the command, where things go, when, on what, how long.</summary>
public sealed record ResultsContext(string Command, string SpecPath, string DocPath, string FiguresDirectory,
    string ModelDirectory, string PacksDirectory, DateTimeOffset Date, string Machine, TimeSpan WallTime, bool Shipped);

/// <summary>
/// Writes <c>docs/steering-results.md</c> from a <see cref="ResultsRun"/> and the ship rule's decisions, and copies
/// what it shows next to it (per sweep the charts and <c>summary.csv</c>, per theme the flow graph's SVG, per pack
/// its sweep curve) into the figures folder. Every number is formatted from the run; NaN never reaches the text
/// (an empty measure is "–").
/// </summary>
public static class ResultsDocument
{
    /// <summary>Figures of one sweep, relative to the figures folder.</summary>
    public static string SweepFolder(ThemeSweepOutcome s) => $"{s.Theme.Name}/{s.Sweep.Variant}";

    public static string PackFigure(PackDecision d) => $"{SweepFolder(d.Sweep)}/pack-{d.Spec.Name}.png";

    /// <summary>Copies the figures, draws the pack curves, writes the document; returns every file written.</summary>
    public static IReadOnlyList<string> Write(ResultsRun run, IReadOnlyList<PackDecision> packs, ResultsContext context)
    {
        var written = new List<string>();
        var figures = context.FiguresDirectory;
        foreach (var theme in run.Sweeps.GroupBy(s => s.Theme.Name))
        {
            Directory.CreateDirectory(Path.Combine(figures, theme.Key));
            var svg = Path.Combine(figures, theme.Key, "graph.svg");
            File.WriteAllText(svg, theme.First().Graph.ToSvg());
            written.Add(svg);
            foreach (var sweep in theme)
            {
                var dir = Path.Combine(figures, SweepFolder(sweep));
                Directory.CreateDirectory(dir);
                foreach (var file in sweep.Charts.Append(SweepSummary.File))
                {
                    File.Copy(Path.Combine(sweep.Directory, file), Path.Combine(dir, file), overwrite: true);
                    written.Add(Path.Combine(dir, file));
                }
            }
        }
        foreach (var pack in packs)
        {
            var path = Path.Combine(figures, PackFigure(pack));
            ResultsCharts.PackCurve(path, pack);
            written.Add(path);
        }
        var docDir = Path.GetDirectoryName(Path.GetFullPath(context.DocPath))!;
        Directory.CreateDirectory(docDir);
        File.WriteAllText(context.DocPath, Markdown(run, packs, context));
        written.Add(context.DocPath);
        return written;
    }

    /// <summary>The machine in one line: cores, CPU model (where the OS says it), OS and runtime.</summary>
    public static string Machine()
    {
        const string cpuinfo = "/proc/cpuinfo";
        var model = File.Exists(cpuinfo)
            ? File.ReadLines(cpuinfo).FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))
                ?.Split(':', 2)[1].Trim()
            : null;
        return $"{Environment.ProcessorCount} cores{(model is null ? "" : $" ({model})")}, " +
               $"{RuntimeInformation.OSDescription}, .NET {Environment.Version}, ONNX Runtime on the CPU";
    }

    public static string Markdown(ResultsRun run, IReadOnlyList<PackDecision> packs, ResultsContext context)
    {
        // Every number of the document is formatted here: decimal points in every locale.
        var culture = CultureInfo.CurrentCulture;
        CultureInfo.CurrentCulture = CultureInfo.InvariantCulture;
        try
        {
            return Build(run, packs, context);
        }
        finally
        {
            CultureInfo.CurrentCulture = culture;
        }
    }

    private static string Build(ResultsRun run, IReadOnlyList<PackDecision> packs, ResultsContext context)
    {
        var spec = run.Spec;
        var sb = new StringBuilder();
        void Text(string s) => sb.AppendLine(s);
        var docDir = Path.GetDirectoryName(Path.GetFullPath(context.DocPath))!;
        string Link(string path) => Path.GetRelativePath(docDir, Path.GetFullPath(path)).Replace('\\', '/');
        string Figure(string relative) => Link(Path.Combine(context.FiguresDirectory, relative));

        var model = Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(context.ModelDirectory)));
        Text($"# Steering results on {model}: the feature-flow method, measured");
        Text("");
        Text($"Every table, number, verdict and figure below is written by one command from the shipped model folder " +
             $"(`{Link(context.ModelDirectory)}`: the model, its SAEs and flow map) and the spec " +
             $"[`{Link(context.SpecPath)}`]({Link(context.SpecPath)}); rerun it rather than edit this file. " +
             "The work folder keeps every row, so a rerun resumes where one stopped.");
        Text("");
        Text("```");
        Text(context.Command);
        Text("```");
        Text("");
        Text("| | |");
        Text("|---|---|");
        Text($"| machine | {context.Machine} |");
        Text($"| date | {context.Date.UtcDateTime:yyyy-MM-dd HH:mm} UTC |");
        Text($"| wall time | {context.WallTime.TotalSeconds:F0} s ({context.WallTime.TotalMinutes:F1} min) |");
        Text("");
        Text("| step | seconds | in this run |");
        Text("|---|---:|---|");
        foreach (var step in run.Steps)
            Text($"| {step.Step} | {step.Seconds:F1} | {(step.Reused ? "reused from the work folder" : "computed")} |");
        Text("");
        Method(spec, Text);
        Matches(run, Text);
        Text("## Hook fidelity: the steering hook's JumpReLU against each TopK SAE");
        Text("");
        Text($"`sae fidelity` on {spec.Fidelity.Tokens} fresh tokens (stories of " +
             $"{ResultsFidelitySettings.StoryTokens} tokens from seed {spec.Fidelity.Seed}, which the SAEs never " +
             "saw). " +
             "Missed mass: share of top-k's activation on features the hook does not fire; extra mass: the hook's " +
             "activation on features top-k drops; FVU decoding either.");
        Text("");
        sb.Append(run.Fidelity.Count > 0 ? Fidelity.ToMarkdown(run.Fidelity) : "(no TopK SAE to measure)\n");
        Text("");
        Text("## Flow-graph chain lengths");
        Text("");
        Text("`sae chains`: the flow graph of every residual feature of the shipped flow map as seed; the share of " +
             "graphs whose residual chain spans each number of layers (thresholds \"chance\" are the map's measured " +
             "chance level per layer).");
        Text("");
        sb.Append(FidelityChains.ToMarkdown(run.Chains));
        Text("");
        foreach (var theme in run.Sweeps.GroupBy(s => s.Theme.Name))
            Theme(theme.ToArray(), spec, Text, Figure);
        Packs(packs, spec, context, Text, Figure, Link);
        DoesNotHold(run, packs, Text);
        return sb.ToString();
    }

    private static void Method(ResultsSpec spec, Action<string> text)
    {
        var s = spec.Sweep;
        text("## How the sweeps are measured");
        text("");
        var prompts = string.Join(" · ", s.Prompts.Select(p => p.Length == 0 ? "BOS alone" : $"\"{p}\""));
        text($"Each theme's sweep (`eval sweep`) steers with the flow graph of its seed feature in three modes: " +
             $"**single** (the graph's nodes at one layer l), **cumulative** (its nodes at layers l_start..l) and " +
             $"**baseline** (the seed alone), at every strength of its grid. Every cell runs seeds 1..{s.Seeds} × " +
             $"{s.Prompts.Count} prompts ({prompts}), {s.Tokens} tokens at temperature {s.Temperature}, " +
             $"top-p {s.TopP}; " +
             $"n = {s.Seeds * s.Prompts.Count} generations per cell.");
        text("");
        text("- **theme rate**: share of the generated words that are theme words.");
        text("- **behaviour** B: promotion B = theme rate; suppression B = clamp(1 − rate/rate₀, 0, 1), rate₀ " +
             "the prompt's unsteered mean (so the unsteered cell's own B is not 0).");
        text("- **perplexity** of the generated text under the unsteered model; **coherence** C = min(1, ppl₀/ppl).");
        text("- **combined** = B·C, the paper's behaviour × coherence with the LLM judge replaced by these proxies.");
        text("- Cells show mean ± the 95% Student-t half-width over their n generations.");
        text("- Strength k scales the recipe: promotion adds k·s·v per term (threshold units: s in units of each " +
             "feature's hook threshold); suppression rescales by r = 1 + k·(r₁ − 1), r₁ the spec's value.");
        text("- A claim **holds** when the claimed-better cell's interval of the combined score lies wholly above " +
             "the other's, **fails** when wholly below, and is **inconclusive** when they overlap. " +
             $"\"Small strength\" is the {spec.SmallStrengths} smallest strength(s) of a sweep's grid.");
        text("");
    }

    private static void Matches(ResultsRun run, Action<string> text)
    {
        var o = run.Matches.Options;
        var paper = run.Spec.Paper;
        text("## Match validation: does switching off a feature's top-1 predecessor switch it off?");
        text("");
        text($"`eval matches`: {o.Sequences} of the model's own stories × {o.Tokens} tokens (seed {o.Seed}), " +
             $"{o.SamplesPerLayer} sampled tokens, each with one random active target per layer at R(L); the " +
             $"predecessor is deactivated ({o.Deactivation.ToString().ToLowerInvariant()}: r = 0) on that token " +
             "only. " +
             "**Success**: the target is off afterwards; **Δ**: mean 1 − after/before. **top-1**: the flow map's " +
             "top-1 cosine match; **random**: a random active feature at that site; **exhaustive**: the active " +
             "feature there that lowers the target most. All layers pooled:");
        text("");
        text("| predecessors deactivated | n | top-1 success | top-1 Δ | random success | random Δ " +
             "| exhaustive success | exhaustive Δ |");
        text("|---|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var r in run.Matches.Summary.Where(r => r.Layer is null))
            text($"| {MatchValidationReport.SiteLabel(r.Site)} | {r.Top1.N} | {Percent(r.Top1.Success)} | " +
                 $"{Num(r.Top1.MeanChange, "F3")} | {Percent(r.Random.Success)} | {Num(r.Random.MeanChange, "F3")} | " +
                 $"{Percent(r.Exhaustive.Success)} | {Num(r.Exhaustive.MeanChange, "F3")} |");
        text($"| the paper (Gemma 2 2B, Gemma Scope) | | {Percent(paper.Top1Success)} | {paper.Top1Change:F2} | | | " +
             $"{Percent(paper.ExhaustiveSuccess)} | {paper.ExhaustiveChange:F2} |");
        text("");
        text("Per layer (\"match off\": samples whose top-1 match was not active on the token, left out):");
        text("");
        text(run.Matches.ToMarkdownTable().TrimEnd());
        text("");
        text($"{run.Matches.Rows:N0} one-token batch rows, {run.Matches.Provider}.");
        text("");
    }

    private static void Theme(IReadOnlyList<ThemeSweepOutcome> sweeps, ResultsSpec spec,
        Action<string> text, Func<string, string> figure)
    {
        var first = sweeps[0];
        var theme = first.Theme;
        var graph = first.Graph;
        text($"## Theme `{theme.Name}`: {theme.Title}");
        text("");
        text($"Seed `{theme.Seed.Short}` (`{theme.Seed}`), {Operation(theme)}; theme words: " +
             $"{string.Join(", ", theme.ThemeWords)}. Flow graph: blocks {graph.LStart}..{graph.LEnd}, " +
             $"{graph.Nodes.Count} terms (residual cut: " +
             $"{Threshold(graph.Options.ResidualCut, graph.ResidualCutSource)}; " +
             $"module threshold: {Threshold(graph.Options.ModuleThreshold, graph.ModuleThresholdSource)}).");
        text("");
        text("| block | terms (role, cosine along the chain) |");
        text("|---:|---|");
        foreach (var block in graph.Nodes.GroupBy(n => n.Feature.Site.Layer).OrderBy(g => g.Key))
            text($"| {block.Key} | {string.Join(" · ", block.OrderBy(n => n.Feature.Site.Index).Select(Node))} |");
        text("");
        text($"![flow graph of {theme.Seed.Short}]({figure($"{theme.Name}/graph.svg")})");
        text("");
        foreach (var sweep in sweeps) Sweep(sweep, spec, text, figure);
    }

    private static void Sweep(ThemeSweepOutcome sweep, ResultsSpec spec, Action<string> text,
        Func<string, string> figure)
    {
        var folder = SweepFolder(sweep);
        var s = sweep.Sweep;
        var value = sweep.Theme.Operation == PackOperation.Rescale
            ? $"r₁ = {s.Value.ToString("G4", CultureInfo.InvariantCulture)}"
            : $"s = {s.Value.ToString("G4", CultureInfo.InvariantCulture)}";
        text($"### `{sweep.Theme.Name}`, {(s.ThresholdUnits ? "threshold" : "raw")} units ({value} at strength 1)");
        text("");
        text($"Strengths {string.Join(", ", s.Strengths.Select(k => k.ToString("G4")))}; " +
             $"{sweep.Result.Rows.Count} generations. The best strength of each mode and layer (every cell: " +
             $"[`summary.csv`]({figure($"{folder}/{SweepSummary.File}")})):");
        text("");
        text("| cell | strength | theme rate | behaviour | perplexity | combined |");
        text("|---|---:|---|---|---|---|");
        foreach (var c in BestRows(sweep.Cells))
            text($"| {(sweep.SeedOnly(c.Cell) && c.Cell.Mode != "baseline" ? c.Family + " (seed alone)" : c.Family)} " +
                 $"| {c.Cell.Strength:G4} | {Ci(c.ThemeRate)} | {Ci(c.Behaviour)} | {Ci(c.Perplexity)} | " +
                 $"{Ci(c.Combined)} |");
        text("");
        foreach (var chart in sweep.Charts)
            text($"![{Path.GetFileNameWithoutExtension(chart)} of {folder}]({figure($"{folder}/{chart}")})");
        text("");
        var v = sweep.Verdicts(spec.SmallStrengths);
        var small = v.CumulativeAtSmallStrength;
        var details = small.PerStrength.Select(c =>
            $"at k = {c.Claimed.Cell.Strength:G4}: {c.Claimed.Family} {Ci(c.Claimed.Combined)} vs {c.Other.Family} " +
            $"{Ci(c.Other.Combined)} ({Word(c.Verdict)})");
        text($"- **Cumulative beats single-layer at small strength: {Word(small.Overall)}.** " +
             (small.PerStrength.Count == 0
                 ? "The graph spans one layer, so cumulative is single-layer."
                 : "Cumulative over the full span against the best single layer at the same strength, combined " +
                   $"score: {string.Join("; ", details)}."));
        if (v.FlowBeatsSeed is { } f)
            text($"- **Flow-graph features beat the seed alone: {Word(f.Verdict)}.** Best flow-graph cell " +
                 $"{f.Claimed.Label} {Ci(f.Claimed.Combined)} against the best seed-alone cell {f.Other.Label} " +
                 $"{Ci(f.Other.Combined)}.");
        else
            text("- **Flow-graph features beat the seed alone: not applicable** (the graph has no node but the seed).");
        if (v.BestLayer is { } b)
            text($"- **The best layer is the seed's layer ({b.SeedLayer}): {LayerWord(b)}.** Best single-layer cell " +
                 $"{b.Best.Label} {Ci(b.Best.Combined)}" +
                 (b.AtSeedLayer is { } at && at != b.Best
                     ? $"; best at the seed's layer {at.Label} {Ci(at.Combined)}."
                     : "."));
        text("");
    }

    /// <summary>
    /// The unsteered cell, then the best cell of each single layer, each cumulative layer past l_start (at l_start
    /// cumulative is single) and the baseline.
    /// </summary>
    private static IReadOnlyList<CellSummary> BestRows(IReadOnlyList<CellSummary> cells)
    {
        var steered = cells.Where(c => c.Cell.Mode != SweepArm.Unsteered && !double.IsNaN(c.Combined.Mean)).ToArray();
        var lStart = steered.Where(c => c.Cell.Mode == "cumulative").Select(c => c.Cell.Layer).Min();
        var best = steered.Where(c => !(c.Cell.Mode == "cumulative" && c.Cell.Layer == lStart))
            .GroupBy(c => (c.Cell.Mode, c.Cell.Layer))
            .OrderBy(g => g.Key.Mode switch { "single" => 0, "cumulative" => 1, _ => 2 }).ThenBy(g => g.Key.Layer)
            .Select(g => g.MaxBy(c => c.Combined.Mean)!);
        return [ResultsVerdicts.Unsteered(cells), .. best];
    }

    private static void Packs(IReadOnlyList<PackDecision> packs, ResultsSpec spec, ResultsContext context,
        Action<string> text, Func<string, string> figure, Func<string, string> link)
    {
        var rule = spec.Rule;
        text("## Packs chosen by the ship rule");
        text("");
        text($"For each pack of the spec, the default strength is the strength with the highest mean combined score " +
             $"among the cells of its family whose mean perplexity is at most {rule.MaxPerplexityRatio:G3} × the " +
             $"unsteered mean and whose mean behaviour is above the unsteered mean (ties: the smaller strength); the " +
             $"recommended range ends at the largest strength that qualifies. A pack also needs terms on " +
             $"{rule.MinBlocks} or more blocks. " +
             (context.Shipped
                 ? $"This run shipped the packs that qualify to [`{link(context.PacksDirectory)}`]" +
                   $"({link(context.PacksDirectory)}) (built as `steer build` builds them; the command is in each " +
                   "pack's metadata) and regenerated its README."
                 : "This run did not ship (no `--ship`)."));
        text("");
        if (packs.Count == 0) text("The spec lists no packs.");
        foreach (var d in packs)
        {
            var c = d.Choice;
            text($"### `{d.Spec.Name}`: {d.Sweep.Theme.Name}, {d.Sweep.Sweep.Variant} units, {c.Family}");
            text("");
            text($"Unsteered: behaviour {Ci(c.Unsteered.Behaviour)}, perplexity {Ci(c.Unsteered.Perplexity)}; the " +
                 $"perplexity bound is {Sig(c.MaxPerplexity, 4)}.");
            text("");
            text("| strength | theme rate | behaviour | perplexity | combined | qualifies |");
            text("|---:|---|---|---|---|---|");
            foreach (var cell in c.Cells)
            {
                var qualifies = cell == c.Chosen ? "**chosen**" : c.Qualifying.Contains(cell) ? "yes" : "no";
                text($"| {cell.Cell.Strength:G4} | {Ci(cell.ThemeRate)} | {Ci(cell.Behaviour)} | " +
                     $"{Ci(cell.Perplexity)} | {Ci(cell.Combined)} | {qualifies} |");
            }
            text("");
            if (d.Refusal is { } refusal) text($"**Refused**: {refusal}.");
            else
                text($"**Default strength {c.Chosen!.Cell.Strength:G4}**, terms on {d.Blocks} blocks " +
                     $"({string.Join(", ", d.Pack!.Terms.Select(t => t.Site.Layer).Distinct().Order())}); " +
                     $"{(context.Shipped ? "shipped" : "not shipped in this run")}.");
            text("");
            text($"![sweep curve of {d.Spec.Name}]({figure(PackFigure(d))})");
            text("");
            if (c.Chosen is not null) Examples(d, text);
        }
    }

    /// <summary>
    /// The chosen cell's text next to the unsteered text: words that merely begin with a theme word ("momom") are
    /// not theme words, so a suppression can lower the theme rate by breaking the word rather than avoiding it.
    /// </summary>
    private static void Examples(PackDecision d, Action<string> text)
    {
        var rows = d.Sweep.Result.Rows;
        var words = d.Sweep.Theme.ThemeWords;
        var unsteered = rows.Where(r => r.Mode == SweepArm.Unsteered).ToArray();
        var chosen = rows.Where(r => r.Cell == d.Choice.Chosen!.Cell).ToArray();
        ConfidenceInterval Prefixed(IEnumerable<SweepRow> cell) =>
            ConfidenceInterval.Of(cell.Select(r => PrefixRate(r.Text, words)));
        text($"Words that begin with a theme word (catching broken forms such as \"{words[0]}\" + a suffix): " +
             $"unsteered {Ci(Prefixed(unsteered))}, at the default strength {Ci(Prefixed(chosen))}; theme rate " +
             $"{Ci(d.Choice.Unsteered.ThemeRate)} → {Ci(d.Choice.Chosen!.ThemeRate)}.");
        text("");
        var prompt = d.Sweep.Plan.Options.Prompts[0];
        foreach (var (label, cell) in new[] { ("unsteered", unsteered), ("default strength", chosen) })
            if (cell.FirstOrDefault(r => r.Seed == 1 && r.Prompt == prompt) is { } row)
                text($"- seed 1, {label}: \"{Escape(row.Prompt + row.Text)}\"");
        text("");
    }

    /// <summary>Share of the text's words that begin with a theme word (0 for a text without words).</summary>
    private static double PrefixRate(string text, IReadOnlyList<string> themeWords)
    {
        var all = System.Text.RegularExpressions.Regex.Matches(text, "[A-Za-z']+");
        return all.Count == 0 ? 0 : all.Count(m => themeWords.Any(w =>
            m.Value.StartsWith(w, StringComparison.OrdinalIgnoreCase))) / (double)all.Count;
    }

    private static string Escape(string s) =>
        s.Replace("\n", " ", StringComparison.Ordinal).Replace("|", "\\|", StringComparison.Ordinal);

    private static void DoesNotHold(ResultsRun run, IReadOnlyList<PackDecision> packs, Action<string> text)
    {
        var spec = run.Spec;
        var verdicts = run.Sweeps.Select(s => (Sweep: s, V: s.Verdicts(spec.SmallStrengths))).ToArray();
        text("## What does not hold on a model this small");
        text("");
        text("The paper's findings, judged on every sweep above:");
        text("");
        text("| sweep | cumulative beats single-layer at small strength | flow-graph features beat the seed alone | " +
             "best layer is the seed's |");
        text("|---|---|---|---|");
        foreach (var (s, v) in verdicts)
            text($"| {SweepFolder(s)} | {Word(v.CumulativeAtSmallStrength.Overall)} | " +
                 $"{(v.FlowBeatsSeed is { } f ? Word(f.Verdict) : Word(Verdict.NotApplicable))} | " +
                 (v.BestLayer is { } b ? $"{LayerWord(b)} (L{b.Best.Cell.Layer})" : Word(Verdict.NotApplicable)) +
                 " |");
        text("");
        Tally("Cumulative steering beats single-layer steering at small strength",
            verdicts.Select(x => x.V.CumulativeAtSmallStrength.Overall), text);
        Tally("Flow-graph features beat the seed alone",
            verdicts.Select(x => x.V.FlowBeatsSeed?.Verdict ?? Verdict.NotApplicable), text);
        var layers = verdicts.Where(x => x.V.BestLayer is not null).Select(x => x.V.BestLayer!).ToArray();
        text($"- The paper finds the best layer is often not the seed's: here the best single layer is another " +
             $"layer, clearly, in {layers.Count(b => b.Verdict == Verdict.Fails)} of {layers.Length} sweeps, another " +
             $"layer within the intervals in {layers.Count(b => b.Verdict == Verdict.Inconclusive)}, and the seed's " +
             $"own layer in {layers.Count(b => b.Verdict == Verdict.Holds)}.");

        var rule = spec.Rule;
        foreach (var (s, _) in verdicts.Where(x => x.Sweep.Theme.Operation == PackOperation.Promote))
        {
            var g = s.Graph;
            if (g.LEnd == g.LStart) continue;
            var unsteered = ResultsVerdicts.Unsteered(s.Cells);
            var full = s.Cells.Where(c => c.Cell.Mode == "cumulative" && c.Cell.Layer == g.LEnd)
                .OrderBy(c => c.Cell.Strength).ToArray();
            var bound = rule.MaxPerplexityRatio * unsteered.Perplexity.Mean;
            var coherent = full.LastOrDefault(c => c.Perplexity.Mean <= bound);
            var strongest = full.MaxBy(c => c.ThemeRate.Mean)!;
            text($"- Cumulative promotion over the whole graph ({SweepFolder(s)}, blocks {g.LStart}..{g.LEnd}): " +
                 (coherent is null
                     ? $"no strength keeps perplexity within {rule.MaxPerplexityRatio:G3} × unsteered " +
                       $"({Sig(unsteered.Perplexity.Mean, 3)}); "
                     : $"the strongest push within {rule.MaxPerplexityRatio:G3} × unsteered perplexity is k = " +
                       $"{coherent.Cell.Strength:G4}, theme rate {Ci(unsteered.ThemeRate)} → " +
                       $"{Ci(coherent.ThemeRate)}; ") +
                 $"the highest theme rate, {Ci(strongest.ThemeRate)} at k = {strongest.Cell.Strength:G4}, comes at " +
                 $"perplexity {Ci(strongest.Perplexity)}.");
        }

        var all = run.Matches.Summary.FirstOrDefault(r => r.Site == MatchSite.All && r.Layer is null);
        if (all is not null)
        {
            var paper = spec.Paper;
            text("- Match validation: with all three top-1 predecessors switched off together the target goes off " +
                 $"in {Percent(all.Top1.Success)} of samples (mean change {Num(all.Top1.MeanChange, "F2")}), against " +
                 "the " +
                 $"paper's {Percent(paper.Top1Success)} ({paper.Top1Change:F2}); the exhaustive search reaches " +
                 $"{Percent(all.Exhaustive.Success)} ({Num(all.Exhaustive.MeanChange, "F2")}) against " +
                 $"{Percent(paper.ExhaustiveSuccess)} ({paper.ExhaustiveChange:F2}). A random active feature reaches " +
                 $"{Percent(all.Random.Success)}: the top-1 matches " +
                 (all.Top1.Success > all.Random.Success
                     ? $"carry signal ({Ratio(all.Top1.Success, all.Random.Success)} the random rate)"
                     : "do no better than a random active feature") +
                 (all.Top1.Success < paper.Top1Success
                     ? ", and a single predecessor switches a feature off far less often than the paper reports for " +
                       "Gemma 2 2B."
                     : ", and a single predecessor switches a feature off as often as the paper reports for " +
                       "Gemma 2 2B or more."));
        }
        if (run.Chains.FirstOrDefault() is { } chains)
            text($"- Chains ({chains.Map}): {Percent(chains.Counts[0] / (double)chains.Graphs)} of the " +
                 $"{chains.Graphs} residual features have no predecessor or successor above the cut, so their flow " +
                 $"graph is the seed's layer alone; mean chain length {chains.MeanLength:F2} of " +
                 $"{chains.Counts.Length} layers.");
        var refused = packs.Where(p => p.Refusal is not null).ToArray();
        text($"- The ship rule accepted {packs.Count - refused.Length} of the spec's {packs.Count} multi-layer " +
             "pack(s)" +
             (refused.Length == 0 ? "." : $"; refused: {string.Join(", ", refused.Select(p => p.Spec.Name))}."));
        text("");
    }

    private static void Tally(string claim, IEnumerable<Verdict> verdicts, Action<string> text)
    {
        var v = verdicts.ToArray();
        var judged = v.Count(x => x != Verdict.NotApplicable);
        int holds = v.Count(x => x == Verdict.Holds), fails = v.Count(x => x == Verdict.Fails);
        var summary = (holds, fails) switch
        {
            (0, 0) => "not decided by the intervals",
            (0, _) => "not reproduced here",
            (_, 0) => "reproduced where the intervals decide",
            _ => "mixed",
        };
        text($"- {claim} (the paper): {summary}: holds in {holds} of {judged} sweeps, fails in {fails}, " +
             $"inconclusive in {v.Count(x => x == Verdict.Inconclusive)}.");
    }

    private static string Operation(ThemeSpec theme) => theme.Operation == PackOperation.Rescale
        ? "suppressed (rescale)"
        : "promoted (add)";

    private static string Node(FlowNode n) => n.Role == "seed"
        ? $"`{n.Feature.Short}` (seed)"
        : string.Create(CultureInfo.InvariantCulture, $"`{n.Feature.Short}` ({n.Role}, {n.Score:F2})");

    private static string Threshold(float? value, string source) =>
        value?.ToString("G3", CultureInfo.InvariantCulture) ?? source;

    private static string Word(Verdict v) => v switch
    {
        Verdict.Holds => "holds",
        Verdict.Fails => "fails",
        Verdict.Inconclusive => "inconclusive",
        _ => "not applicable",
    };

    private static string LayerWord(BestLayerVerdict b) => b.Verdict switch
    {
        Verdict.Holds => "yes",
        Verdict.Fails => "no",
        _ => "no, but within the intervals",
    };

    private static string Ratio(double a, double b) => b > 0 && !double.IsNaN(a)
        ? (a / b).ToString("F1", CultureInfo.InvariantCulture) + " ×"
        : "–";

    private static string Percent(double share) =>
        double.IsNaN(share) ? "–" : (100 * share).ToString("F1", CultureInfo.InvariantCulture) + " %";

    private static string Num(double v, string format) =>
        double.IsNaN(v) ? "–" : v.ToString(format, CultureInfo.InvariantCulture);

    private static string Ci(ConfidenceInterval c) =>
        double.IsNaN(c.Mean) ? "–"
        : double.IsNaN(c.HalfWidth) ? Sig(c.Mean, 3)
        : $"{Sig(c.Mean, 3)} ± {Sig(c.HalfWidth, 2)}";

    /// <summary><paramref name="digits"/> significant digits, never in exponent form: 0.000504, 2.59, 10,600.</summary>
    private static string Sig(double v, int digits)
    {
        if (double.IsNaN(v)) return "–";
        if (v == 0 || double.IsInfinity(v)) return v.ToString(CultureInfo.InvariantCulture);
        var magnitude = (int)Math.Floor(Math.Log10(Math.Abs(v)));
        var decimals = digits - 1 - magnitude;
        if (decimals >= 0) return Math.Round(v, Math.Min(decimals, 15)).ToString("#,0." + new string('#', decimals),
            CultureInfo.InvariantCulture);
        var unit = Math.Pow(10, -decimals);
        return (Math.Round(v / unit) * unit).ToString("#,0", CultureInfo.InvariantCulture);
    }
}
