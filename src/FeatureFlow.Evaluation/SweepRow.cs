using System.Globalization;
using System.Text;

namespace FeatureFlow.Evaluation;

/// <summary>
/// One generation of a sweep: its cell, seed and prompt, the raw measures (<see cref="GenerationScore"/>, optional
/// judge ratings) and the derived behaviour, coherence and combined scores. NaN is "not measured".
/// </summary>
public sealed record SweepRow
{
    public required string Mode { get; init; }
    public int? Layer { get; init; }
    public string Schedule { get; init; } = "";
    public float Strength { get; init; }
    public int Seed { get; init; }
    public string Prompt { get; init; } = "";
    /// <summary>length (max tokens), stop (EOS/BOS) or error (the logits became non-finite).</summary>
    public string Finish { get; init; } = "length";
    public int Tokens { get; init; }
    public double Activation { get; init; } = double.NaN;
    public double ActiveShare { get; init; } = double.NaN;
    public double ThemeRate { get; init; } = double.NaN;
    public double Perplexity { get; init; } = double.NaN;
    public double Behaviour { get; init; } = double.NaN;
    public double Coherence { get; init; } = double.NaN;
    public double Combined { get; init; } = double.NaN;
    public double JudgeTopic { get; init; } = double.NaN;
    public double JudgeCoherence { get; init; } = double.NaN;
    public double JudgeScore { get; init; } = double.NaN;
    public string Text { get; init; } = "";
    public IReadOnlyList<int> TokenIds { get; init; } = [];

    public CellKey Cell => new(Mode, Layer, Schedule, Strength);

    /// <summary>Cell, seed and prompt: what a resumed sweep checks before running a generation.</summary>
    public string Key => RowKey(Cell, Seed, Prompt);

    public static string RowKey(CellKey cell, int seed, string prompt) =>
        string.Create(CultureInfo.InvariantCulture, $"{cell}|{seed}|{prompt}");

    /// <summary>The share the behaviour is measured on.</summary>
    public double Share(BehaviourMeasure measure) => measure == BehaviourMeasure.ThemeWords ? ThemeRate : ActiveShare;

    /// <summary>
    /// Behaviour, coherence and combined from the raw measures and the prompt's unsteered baseline. A generation
    /// that ended in non-finite logits has coherence 0: the steering broke the model.
    /// </summary>
    public SweepRow WithDerived(SteeringGoal goal, BehaviourMeasure measure, Baseline baseline)
    {
        var behaviour = SteeringScores.Behaviour(goal, Share(measure), baseline.Behaviour);
        var coherence = Finish == "error" ? 0 : SteeringScores.Coherence(Perplexity, baseline.Perplexity);
        var judge = double.IsNaN(JudgeTopic) ? double.NaN : SteeringScores.JudgeScore(goal, JudgeTopic, JudgeCoherence);
        return this with
        {
            Behaviour = behaviour,
            Coherence = coherence,
            Combined = SteeringScores.Combined(behaviour, coherence),
            JudgeScore = judge,
        };
    }

    public static readonly string[] Columns =
    [
        "mode", "layer", "schedule", "strength", "seed", "prompt", "finish", "tokens", "activation", "active_share",
        "theme_rate", "perplexity", "behaviour", "coherence", "combined", "judge_topic", "judge_coherence",
        "judge_score", "text", "token_ids",
    ];

    public string ToCsv() => string.Join(",", new[]
    {
        Mode, Layer?.ToString(CultureInfo.InvariantCulture) ?? "", Schedule,
        Strength.ToString("R", CultureInfo.InvariantCulture), Seed.ToString(CultureInfo.InvariantCulture), Prompt,
        Finish, Tokens.ToString(CultureInfo.InvariantCulture),
        Csv.Number(Activation), Csv.Number(ActiveShare), Csv.Number(ThemeRate), Csv.Number(Perplexity),
        Csv.Number(Behaviour), Csv.Number(Coherence), Csv.Number(Combined), Csv.Number(JudgeTopic),
        Csv.Number(JudgeCoherence), Csv.Number(JudgeScore), Text,
        string.Join(' ', TokenIds.Select(t => t.ToString(CultureInfo.InvariantCulture))),
    }.Select(Csv.Escape));

    public static SweepRow FromCsv(IReadOnlyList<string> f)
    {
        if (f.Count != Columns.Length) throw new FormatException($"a row has {f.Count} fields, not {Columns.Length}");
        var inv = CultureInfo.InvariantCulture;
        return new SweepRow
        {
            Mode = f[0],
            Layer = f[1].Length == 0 ? null : int.Parse(f[1], inv),
            Schedule = f[2],
            Strength = float.Parse(f[3], inv),
            Seed = int.Parse(f[4], inv),
            Prompt = f[5],
            Finish = f[6],
            Tokens = int.Parse(f[7], inv),
            Activation = Csv.ParseNumber(f[8]),
            ActiveShare = Csv.ParseNumber(f[9]),
            ThemeRate = Csv.ParseNumber(f[10]),
            Perplexity = Csv.ParseNumber(f[11]),
            Behaviour = Csv.ParseNumber(f[12]),
            Coherence = Csv.ParseNumber(f[13]),
            Combined = Csv.ParseNumber(f[14]),
            JudgeTopic = Csv.ParseNumber(f[15]),
            JudgeCoherence = Csv.ParseNumber(f[16]),
            JudgeScore = Csv.ParseNumber(f[17]),
            Text = f[18],
            TokenIds = f[19].Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(t => int.Parse(t, inv)).ToArray(),
        };
    }
}

/// <summary>RFC 4180 CSV: fields with commas, quotes or line breaks are quoted; NaN is an empty field.</summary>
public static class Csv
{
    public static string Escape(string field) => field.AsSpan().IndexOfAny(",\"\r\n") < 0
        ? field
        : "\"" + field.Replace("\"", "\"\"", StringComparison.Ordinal) + "\"";

    /// <summary>Round-trip formatting, so a resumed sweep recomputes exactly what it wrote.</summary>
    public static string Number(double value) =>
        double.IsNaN(value) ? "" : value.ToString("R", CultureInfo.InvariantCulture);

    public static double ParseNumber(string field) =>
        field.Length == 0 ? double.NaN : double.Parse(field, NumberStyles.Float, CultureInfo.InvariantCulture);

    /// <summary>
    /// The records of a CSV text. A last record cut off mid-write (an open quote, or no final line break) is
    /// returned in <paramref name="truncated"/> instead, so a killed run's partial line is dropped, not misread.
    /// </summary>
    public static List<string[]> Parse(string text, out bool truncated)
    {
        var records = new List<string[]>();
        var fields = new List<string>();
        var field = new StringBuilder();
        var quoted = false;
        var i = 0;
        while (i < text.Length)
        {
            var c = text[i];
            if (quoted)
            {
                if (c == '"' && i + 1 < text.Length && text[i + 1] == '"') { field.Append('"'); i += 2; continue; }
                if (c == '"') quoted = false;
                else field.Append(c);
                i++;
                continue;
            }
            switch (c)
            {
                case '"': quoted = true; break;
                case ',': fields.Add(field.ToString()); field.Clear(); break;
                case '\r': break;
                case '\n':
                    fields.Add(field.ToString());
                    field.Clear();
                    records.Add([.. fields]);
                    fields.Clear();
                    break;
                default: field.Append(c); break;
            }
            i++;
        }
        truncated = quoted || field.Length > 0 || fields.Count > 0;
        return records;
    }
}
