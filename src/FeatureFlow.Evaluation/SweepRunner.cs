using System.Text;
using System.Text.Json;
using FeatureFlow.Engine;
using FeatureFlow.Sae;

namespace FeatureFlow.Evaluation;

/// <summary>What a sweep run did: every row of the current grid, each prompt's baseline, how many rows it ran.</summary>
public sealed record SweepResult(IReadOnlyList<SweepRow> Rows, IReadOnlyDictionary<string, Baseline> Baselines,
    int Generated, int Skipped);

/// <summary>
/// Runs a <see cref="SweepPlan"/> through the batching engine and keeps its rows in <c>rows.csv</c>.
/// <list type="number">
/// <item>The unsteered arm of every (prompt, seed) first, all seeds of a prompt as rows of one batch: they give each
/// prompt's baseline, which the behaviour and coherence of every other row are relative to.</item>
/// <item>Then per (prompt, seed) every steered arm (all modes, layers, schedules, strengths) as rows of one batch
/// via <see cref="GenerationEngine.SubmitAll"/>; several such groups are in flight so that decode steps stay full.
/// Each finished group's rows are appended and flushed in submission order.</item>
/// </list>
/// Resumable: a row whose key (cell, seed, prompt) is already in the file is not run again, and a partial last line
/// of a killed run is dropped. The raw measures of a row depend on the settings in <c>sweep.json</c>, so a run with
/// other settings refuses the folder; the derived scores are recomputed for every row once the baselines are known.
/// </summary>
public static class SweepRunner
{
    public const string RowsFile = "rows.csv", SettingsFile = "sweep.json";

    private sealed record Item(SweepArm Arm, int Prompt, int Seed);

    public static async Task<SweepResult> RunAsync(GenerationEngine engine, SaeSet saes, SweepPlan plan,
        string directory, ISteeringJudge? judge = null, Action<int, int>? progress = null,
        CancellationToken cancellationToken = default)
    {
        Directory.CreateDirectory(directory);
        CheckSettings(Path.Combine(directory, SettingsFile), plan.Settings);
        var rowsPath = Path.Combine(directory, RowsFile);
        var rows = Load(rowsPath);
        var o = plan.Options;
        var prompts = o.Prompts.Select(engine.EncodePrompt).ToArray();
        var seeds = Enumerable.Range(1, o.Seeds).ToArray();
        bool Missing(Item i) => !rows.ContainsKey(SweepRow.RowKey(i.Arm.Cell, i.Seed, o.Prompts[i.Prompt]));

        var unsteered = plan.Arms[0];
        var baselineGroups = Enumerable.Range(0, prompts.Length)
            .Select(p => seeds.Select(s => new Item(unsteered, p, s)).Where(Missing).ToArray())
            .Where(g => g.Length > 0).ToArray();
        var steeredGroups = Enumerable.Range(0, prompts.Length)
            .SelectMany(p => seeds.Select(s => plan.Arms.Skip(1).Select(a => new Item(a, p, s)).Where(Missing)))
            .Select(g => g.ToArray()).Where(g => g.Length > 0).ToArray();
        var total = baselineGroups.Sum(g => g.Length) + steeredGroups.Sum(g => g.Length);
        var skipped = prompts.Length * seeds.Length * plan.Arms.Count - total;
        var done = 0;
        progress?.Invoke(0, total);

        using var scorer = new GenerationScorer(engine, saes.Get(plan.SeedFeature.Site, "seed feature"),
            plan.SeedFeature.Index);
        // Twice the decode rows: the next groups are queued while finished ones are scored, so steps stay full.
        var window = 2 * engine.Options.MaxBatchRows;
        Task<SweepRow[]> Run(Item[] group) => RunGroup(engine, scorer, judge, plan, prompts, group, cancellationToken);
        await Pipeline(baselineGroups, window, Run, group =>
        {
            foreach (var row in group) rows[row.Key] = row;
            progress?.Invoke(done += group.Length, total);
        }).ConfigureAwait(false);

        var baselines = Enumerable.Range(0, prompts.Length).ToDictionary(p => o.Prompts[p], p =>
            SteeringScores.BaselineOf(seeds.Select(s => rows[SweepRow.RowKey(unsteered.Cell, s, o.Prompts[p])])
                .Select(r => (r.Share(plan.Behaviour), r.Perplexity))), StringComparer.Ordinal);
        SweepRow Derive(SweepRow r) =>
            baselines.TryGetValue(r.Prompt, out var b) ? r.WithDerived(plan.Goal, plan.Behaviour, b) : r;
        foreach (var key in rows.Keys.ToArray()) rows[key] = Derive(rows[key]);
        Rewrite(rowsPath, rows.Values);

        await using (var writer = new StreamWriter(rowsPath, append: true, new UTF8Encoding(false)))
        {
            await Pipeline(steeredGroups, window, Run, group =>
            {
                foreach (var row in group.Select(Derive))
                {
                    rows[row.Key] = row;
                    writer.Write(row.ToCsv() + "\n");
                }
                writer.Flush();
                progress?.Invoke(done += group.Length, total);
            }).ConfigureAwait(false);
        }

        var grid = Enumerable.Range(0, prompts.Length)
            .SelectMany(p => seeds.SelectMany(s => plan.Arms.Select(a => SweepRow.RowKey(a.Cell, s, o.Prompts[p]))))
            .Select(key => rows[key]).ToArray();
        return new SweepResult(grid, baselines, total, skipped);
    }

    /// <summary>
    /// Keeps about <paramref name="window"/> rows in flight and hands finished groups to <paramref name="finished"/>
    /// in submission order (one group is always admitted, however large).
    /// </summary>
    private static async Task Pipeline(IReadOnlyList<Item[]> groups, int window, Func<Item[], Task<SweepRow[]>> run,
        Action<SweepRow[]> finished)
    {
        var inFlight = new Queue<(int Rows, Task<SweepRow[]> Task)>();
        var rows = 0;
        foreach (var group in groups)
        {
            while (inFlight.Count > 0 && rows + group.Length > window)
            {
                var (count, task) = inFlight.Dequeue();
                finished(await task.ConfigureAwait(false));
                rows -= count;
            }
            inFlight.Enqueue((group.Length, run(group)));
            rows += group.Length;
        }
        while (inFlight.Count > 0) finished(await inFlight.Dequeue().Task.ConfigureAwait(false));
    }

    /// <summary>One batch: every item's generation submitted together, then each scored (and judged).</summary>
    private static async Task<SweepRow[]> RunGroup(GenerationEngine engine, GenerationScorer scorer,
        ISteeringJudge? judge, SweepPlan plan, int[][] prompts, Item[] items, CancellationToken cancellationToken)
    {
        var o = plan.Options;
        var generations = engine.SubmitAll(items.Select(i => new GenerationRequest
        {
            PromptIds = prompts[i.Prompt],
            MaxTokens = o.Tokens,
            Sampling = new SamplingOptions { Temperature = o.Temperature, TopP = o.TopP, Seed = (ulong)i.Seed },
            Steering = i.Arm.Steering,
        }).ToArray());
        var outputs = await Task.WhenAll(generations.Select(g => ReadAsync(g, cancellationToken))).ConfigureAwait(false);
        var rows = await Task.Run(() => items.Select((item, k) =>
        {
            var (ids, text, finish) = outputs[k];
            var score = scorer.Score(prompts[item.Prompt], ids, text, plan.ThemeWords);
            return new SweepRow
            {
                Mode = item.Arm.Mode,
                Layer = item.Arm.Layer,
                Schedule = item.Arm.Schedule,
                Strength = item.Arm.Strength,
                Seed = item.Seed,
                Prompt = o.Prompts[item.Prompt],
                Finish = finish,
                Tokens = score.Tokens,
                Activation = score.Activation,
                ActiveShare = score.ActiveShare,
                ThemeRate = score.ThemeRate,
                Perplexity = score.Perplexity,
                Text = text,
                TokenIds = ids,
            };
        }).ToArray(), cancellationToken).ConfigureAwait(false);
        if (judge is null) return rows;
        for (var k = 0; k < rows.Length; k++)
        {
            var rating = await judge.RateAsync(rows[k].Prompt, rows[k].Text, cancellationToken).ConfigureAwait(false);
            rows[k] = rows[k] with { JudgeTopic = rating.Topic, JudgeCoherence = rating.Coherence };
        }
        return rows;
    }

    private static async Task<(List<int> Ids, string Text, string Finish)> ReadAsync(Generation generation,
        CancellationToken cancellationToken)
    {
        using var _ = generation;
        var ids = new List<int>();
        var text = new StringBuilder();
        var finish = "length";
        try
        {
            await foreach (var u in generation.ReadAllAsync(cancellationToken).ConfigureAwait(false))
            {
                ids.AddRange(u.TokenIds);
                text.Append(u.Text);
                if (u.Finish is { } f) finish = f.ToString().ToLowerInvariant();
            }
        }
        catch (GenerationFailedException)
        {
            // The steering drove this row's logits out of range; the tokens before that are still its text.
            finish = "error";
        }
        return (ids, text.ToString(), finish);
    }

    private static void CheckSettings(string path, IReadOnlyDictionary<string, string> settings)
    {
        if (File.Exists(path))
        {
            var stored = JsonSerializer.Deserialize<Dictionary<string, string>>(File.ReadAllText(path))
                ?? throw new InvalidDataException($"{path} is not a settings object");
            var differing = settings.Keys.Union(stored.Keys)
                .Where(k => !(settings.TryGetValue(k, out var a) && stored.TryGetValue(k, out var b) && a == b))
                .Order(StringComparer.Ordinal).ToArray();
            if (differing.Length > 0)
            {
                var changes = differing.Select(k =>
                    $"{k}: {stored.GetValueOrDefault(k, "-")} → {settings.GetValueOrDefault(k, "-")}");
                throw new InvalidOperationException($"{Path.GetDirectoryName(path)} holds a sweep with other settings " +
                    $"({string.Join("; ", changes)}); give another --out, or delete the folder to start over");
            }
            return;
        }
        File.WriteAllText(path, JsonSerializer.Serialize(settings, new JsonSerializerOptions { WriteIndented = true }));
    }

    /// <summary>The rows in the file by key (a later duplicate wins); a partial last record is left out.</summary>
    private static Dictionary<string, SweepRow> Load(string path)
    {
        var rows = new Dictionary<string, SweepRow>(StringComparer.Ordinal);
        if (!File.Exists(path)) return rows;
        var records = Csv.Parse(File.ReadAllText(path), out _);
        if (records.Count == 0) return rows;
        if (!records[0].SequenceEqual(SweepRow.Columns))
            throw new InvalidDataException($"{path}: the header is not a sweep's: {string.Join(",", SweepRow.Columns)}");
        foreach (var record in records.Skip(1))
        {
            var row = SweepRow.FromCsv(record);
            rows[row.Key] = row;
        }
        return rows;
    }

    /// <summary>Replaces the file in one move, so a kill during the rewrite leaves the old file whole.</summary>
    private static void Rewrite(string path, IEnumerable<SweepRow> rows)
    {
        var temp = path + ".tmp";
        using (var writer = new StreamWriter(temp, append: false, new UTF8Encoding(false)))
        {
            writer.Write(string.Join(",", SweepRow.Columns) + "\n");
            foreach (var row in rows) writer.Write(row.ToCsv() + "\n");
        }
        File.Move(temp, path, overwrite: true);
    }
}
