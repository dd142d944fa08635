using System.Globalization;
using System.Text.Json;
using FeatureFlow.Flow;
using FeatureFlow.Models.Folder;
using FeatureFlow.Sae;
using FeatureFlow.Steering.Packs;

namespace FeatureFlow.Evaluation;

/// <summary>One sweep cell as a shipped pack's README shows it.</summary>
public sealed record PackCell(string Cell, float Strength, int N, ConfidenceInterval ThemeRate,
    ConfidenceInterval Behaviour, ConfidenceInterval Perplexity, ConfidenceInterval Combined)
{
    public static PackCell Of(CellSummary c) =>
        new(c.Label, c.Cell.Strength, c.N, c.ThemeRate, c.Behaviour, c.Perplexity, c.Combined);
}

/// <summary>
/// What <c>packs.json</c> (next to the results' figures) records of a pack <c>eval results --ship</c> wrote, for
/// <c>steer report --write-readme</c>: the sweep figure (relative to the figures folder), and the cells at the chosen
/// strength: unsteered, the pack's family, each single layer and the seed alone.
/// </summary>
public sealed record ShippedPack(string Name, string Theme, string Sweep, string Family, float Strength,
    string Figure, double MaxPerplexityRatio, IReadOnlyList<PackCell> Rows)
{
    public const string File = "packs.json";

    private static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    public static void Save(string directory, IReadOnlyList<ShippedPack> packs) =>
        System.IO.File.WriteAllText(Path.Combine(directory, File), JsonSerializer.Serialize(packs, Json) + "\n");

    /// <summary>The records in <paramref name="directory"/>, or none when it has no <c>packs.json</c>.</summary>
    public static IReadOnlyList<ShippedPack> Load(string directory)
    {
        var path = Path.Combine(directory, File);
        if (!System.IO.File.Exists(path)) return [];
        try
        {
            return JsonSerializer.Deserialize<ShippedPack[]>(System.IO.File.ReadAllText(path), Json) ?? [];
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: not a list of shipped packs ({e.Message})", e);
        }
    }
}

/// <summary>
/// A pack of the spec judged by the ship rule: its sweep, the strength choice, the pack as <c>steer build</c> would
/// build it at that strength (null when refused), and the refusal, if any.
/// </summary>
public sealed record PackDecision(PackSpec Spec, ThemeSweepOutcome Sweep, StrengthChoice Choice, SteeringPack? Pack,
    string? Refusal)
{
    public int Blocks => Pack?.Terms.Select(t => t.Site.Layer).Distinct().Count() ?? 0;

    /// <summary>The README record: the cells at the chosen strength, led by the unsteered one.</summary>
    public ShippedPack Shipped(string figure, double maxPerplexityRatio)
    {
        var k = Choice.Chosen!.Cell.Strength;
        var cells = Sweep.Cells;
        IEnumerable<CellSummary> Others() => cells.Where(c => c.Cell.Strength == k && c != Choice.Chosen
            && c.Cell.Mode is "single" or "baseline").OrderBy(c => c.Cell.Mode == "baseline").ThenBy(c => c.Cell.Layer);
        PackCell[] rows = [PackCell.Of(Choice.Unsteered), PackCell.Of(Choice.Chosen), .. Others().Select(PackCell.Of)];
        return new ShippedPack(Spec.Name, Spec.Theme, Spec.Sweep, Choice.Family, k, figure, maxPerplexityRatio, rows);
    }
}

/// <summary>Applies the ship rule to the spec's packs and builds them exactly as <c>steer build</c> would.</summary>
public static class ResultsPacks
{
    public static IReadOnlyList<PackDecision> Decide(ResultsRun run, SaeSet saes, ModelFolder folder) =>
        run.Spec.Packs.Select(p => Decide(p, run.Sweep(p.Theme, p.Sweep), run.Spec.Rule, saes, folder)).ToArray();

    public static PackDecision Decide(PackSpec spec, ThemeSweepOutcome sweep, ShipRule rule, SaeSet saes,
        ModelFolder folder)
    {
        var graph = sweep.Graph;
        if (spec.Layer is { } l && (l < graph.LStart || l > graph.LEnd))
            throw new InvalidDataException($"pack {spec.Name}: layer {l} is outside the flow graph of " +
                $"{graph.Seed.Short} ({graph.LStart}..{graph.LEnd})");
        var mode = spec.Mode.ToString().ToLowerInvariant();
        var choice = ResultsVerdicts.ChooseStrength(sweep.Cells, mode, spec.Layer ?? graph.Seed.Site.Layer,
            rule.MaxPerplexityRatio);
        if (choice.Chosen is null) return new PackDecision(spec, sweep, choice, null, choice.Refusal);
        var range = choice.Qualifying.Max(c => c.Cell.Strength);
        var pack = Build(spec, sweep, choice.Chosen.Cell.Strength, range, saes, folder);
        var blocks = pack.Terms.Select(t => t.Site.Layer).Distinct().Order().ToArray();
        var refusal = blocks.Length >= rule.MinBlocks
            ? null
            : $"its terms sit on {blocks.Length} block(s) ({string.Join(", ", blocks)}); a multi-layer pack needs " +
              $"{rule.MinBlocks} or more";
        return new PackDecision(spec, sweep, choice, refusal is null ? pack : null, refusal);
    }

    /// <summary>
    /// The pack that <c>featureflow steer build</c> builds from the command line recorded in its metadata: the
    /// theme's seed and graph thresholds, the sweep's recipe, the family's mode and layer, the chosen strength as
    /// the default and 0..<paramref name="rangeEnd"/> (the largest strength the rule accepts) as the range.
    /// </summary>
    public static SteeringPack Build(PackSpec spec, ThemeSweepOutcome sweep, float strength, float rangeEnd,
        SaeSet saes, ModelFolder folder)
    {
        var theme = sweep.Theme;
        var mode = spec.Mode switch
        {
            SweepMode.Single => PackMode.SingleLayer,
            SweepMode.Cumulative => PackMode.Cumulative,
            _ => PackMode.Baseline,
        };
        var inv = CultureInfo.InvariantCulture;
        string F(float v) => v.ToString("R", inv);
        var args = new List<string>
        {
            "steer", "build", "--name", spec.Name, "--seed", theme.Seed.Short, "--mode", mode.ToString(),
        };
        if (spec.Layer is { } layer) args.AddRange(["--layer", layer.ToString(inv)]);
        args.AddRange(["--operation", theme.Operation.ToString(), "--value", F(sweep.Sweep.Value),
            "--units", sweep.Sweep.ThresholdUnits ? "threshold" : "raw"]);
        if (theme.Cut is { } cut) args.AddRange(["--cut", F(cut)]);
        if (theme.ModuleThreshold is { } module) args.AddRange(["--module-threshold", F(module)]);
        args.AddRange(["--default-strength", F(strength), "--range", $"0,{F(rangeEnd)}",
            "--theme-words", string.Join(",", theme.ThemeWords), "--description", spec.Description]);
        return PackBuilder.Build(sweep.Graph, [], saes, folder.Manifest, new PackBuildOptions
        {
            Name = spec.Name,
            Description = spec.Description,
            Mode = mode,
            Layer = spec.Layer,
            Operation = theme.Operation,
            Value = sweep.Sweep.Value,
            ThresholdUnits = sweep.Sweep.ThresholdUnits,
            DefaultStrength = strength,
            RecommendedRange = [0f, rangeEnd],
            ThemeWords = theme.ThemeWords,
            // Quoted as steer build records its own command line.
            BuildCommand = "featureflow " + string.Join(' ', args.Select(a => a.Contains(' ') ? $"\"{a}\"" : a)),
        });
    }

    /// <summary>Writes NAME.pack.safetensors and NAME.svg (the flow graph) into the pack folder.</summary>
    public static IReadOnlyList<string> Write(PackDecision decision, string packsDirectory)
    {
        var pack = decision.Pack ?? throw new InvalidOperationException(
            $"refusing to ship {decision.Spec.Name}: {decision.Refusal}");
        Directory.CreateDirectory(packsDirectory);
        var path = Path.Combine(packsDirectory, pack.Name + SteeringPack.Extension);
        var svg = Path.Combine(packsDirectory, pack.Name + ".svg");
        pack.Write(path);
        File.WriteAllText(svg, decision.Sweep.Graph.ToSvg());
        return [path, svg];
    }
}
