using System.Globalization;
using FeatureFlow.Flow;
using FeatureFlow.Models;
using FeatureFlow.Models.Folder;
using FeatureFlow.Sae;
using FeatureFlow.Steering;
using FeatureFlow.Steering.Packs;

namespace FeatureFlow.Evaluation;

/// <summary>Which flow-graph nodes a sweep cell steers (the paper's three settings).</summary>
public enum SweepMode
{
    /// <summary>The graph's nodes at one layer l, for each l of the span.</summary>
    Single,
    /// <summary>The graph's nodes at layers l_start..l, for each l of the span.</summary>
    Cumulative,
    /// <summary>The seed feature alone.</summary>
    Baseline,
}

/// <summary>The grid and sampling of a sweep; the steering recipe is in <see cref="FeatureRecipe"/> or a pack.</summary>
public sealed record SweepOptions
{
    /// <summary>BOS alone and three story openings (the shipped model writes TinyStories).</summary>
    public static readonly IReadOnlyList<string> DefaultPrompts =
        ["", "Once upon a time,", "One day, a little girl named Lily", "Tim and his dog went to the"];

    public IReadOnlyList<SweepMode> Modes { get; init; } = [SweepMode.Single, SweepMode.Cumulative, SweepMode.Baseline];
    /// <summary>Layers l for single and cumulative cells; null = every layer of the flow graph's span.</summary>
    public IReadOnlyList<int>? Layers { get; init; }
    /// <summary>Term strengths k (0 = unsteered, 1 = as built); the unsteered arm is always run as well.</summary>
    public IReadOnlyList<float> Strengths { get; init; } = [0.25f, 0.5f, 1f, 1.5f, 2f];
    public IReadOnlyList<PackSchedule> Schedules { get; init; } = [PackSchedule.Constant];
    /// <summary>Sampling seeds 1..Seeds.</summary>
    public int Seeds { get; init; } = 32;
    public int Tokens { get; init; } = 64;
    public float Temperature { get; init; } = 1f;
    public float TopP { get; init; } = 0.9f;
    /// <summary>Prompt texts; the empty string is BOS alone.</summary>
    public IReadOnlyList<string> Prompts { get; init; } = DefaultPrompts;
    /// <summary>null: theme words when there are any, else the seed feature's active share.</summary>
    public BehaviourMeasure? Behaviour { get; init; }
    /// <summary>null: suppression for rescale terms, promotion otherwise.</summary>
    public SteeringGoal? Goal { get; init; }

    public void Validate()
    {
        if (Strengths.Count == 0) throw new ArgumentException("give at least one strength");
        if (Strengths.Any(s => !float.IsFinite(s))) throw new ArgumentException("strengths must be finite numbers");
        if (Schedules.Count == 0) throw new ArgumentException("give at least one schedule");
        if (Seeds < 1) throw new ArgumentException($"seeds must be at least 1, got {Seeds}");
        if (Tokens < 1) throw new ArgumentException($"tokens must be at least 1, got {Tokens}");
        if (Prompts.Count == 0) throw new ArgumentException("give at least one prompt");
        if (Prompts.Distinct(StringComparer.Ordinal).Count() != Prompts.Count)
            throw new ArgumentException("a prompt is listed twice");
    }
}

/// <summary>How a seed feature's packs are built (as <c>steer build</c> builds one).</summary>
public sealed record FeatureRecipe
{
    public PackOperation Operation { get; init; } = PackOperation.Promote;
    /// <summary>s (promote), r (rescale) or c (clamp) at strength 1; null = 4 for promote, 0 for rescale.</summary>
    public float? Value { get; init; }
    public bool ThresholdUnits { get; init; }
    public IReadOnlyList<string> ThemeWords { get; init; } = [];

    /// <summary>Rescale from r = 0, so strength k is r = 1 − k; promote at s = 4, a coherent strength here.</summary>
    public float ResolvedValue => Value ?? Operation switch
    {
        PackOperation.Promote => 4f,
        PackOperation.Rescale => 0f,
        _ => throw new ArgumentException("a clamp sweep needs --value (the target activation c)"),
    };
}

/// <summary>One steered setting at strength 1: mode, layer and schedule, and the pack that realises it.</summary>
public sealed record SweepFamily(string Mode, int? Layer, string Schedule, SteeringPack Pack);

/// <summary>One row of a (prompt, seed) batch: a family at a strength, or the unsteered arm.</summary>
public sealed record SweepArm(string Mode, int? Layer, string Schedule, float Strength, SteeringSpec Steering)
{
    public const string Unsteered = "unsteered";
    public CellKey Cell => new(Mode, Layer, Schedule, Strength);
}

/// <summary>A grid cell: everything but the prompt and seed.</summary>
public readonly record struct CellKey(string Mode, int? Layer, string Schedule, float Strength)
{
    public override string ToString()
    {
        var layer = Layer?.ToString(CultureInfo.InvariantCulture) ?? "";
        return $"{Mode}|{layer}|{Schedule}|{Strength.ToString("R", CultureInfo.InvariantCulture)}";
    }
}

/// <summary>What a sweep runs: the seed feature it scores, its arms, the settings a resumed run must share.</summary>
public sealed class SweepPlan
{
    private SweepPlan(string subject, FeatureId seed, FlowGraph? graph, IReadOnlyList<SweepFamily> families,
        IReadOnlyList<string> themeWords, SteeringGoal goal, SweepOptions options,
        IReadOnlyDictionary<string, string> settings)
    {
        options.Validate();
        Subject = subject;
        SeedFeature = seed;
        Graph = graph;
        Families = families;
        ThemeWords = themeWords;
        Goal = options.Goal ?? goal;
        Behaviour = options.Behaviour
            ?? (themeWords.Count > 0 ? BehaviourMeasure.ThemeWords : BehaviourMeasure.FeatureActivity);
        if (Behaviour == BehaviourMeasure.ThemeWords && themeWords.Count == 0)
            throw new ArgumentException("the theme-word behaviour needs theme words (--theme-words)");
        Options = options;
        Arms =
        [
            new SweepArm(SweepArm.Unsteered, null, "", 0f, SteeringSpec.None),
            .. families.SelectMany(f => options.Strengths.Select(k => new SweepArm(f.Mode, f.Layer, f.Schedule, k,
                new SteeringSpec(f.Pack.At(k, SteeringScope.All, f.Mode).ToArray())))),
        ];
        Settings = settings;
    }

    /// <summary>The seed feature, or the pack's name and content hash.</summary>
    public string Subject { get; }
    /// <summary>The feature whose activation is read out (a pack's first seed).</summary>
    public FeatureId SeedFeature { get; }
    public FlowGraph? Graph { get; }
    public IReadOnlyList<SweepFamily> Families { get; }
    /// <summary>The unsteered arm first, then every family at every strength.</summary>
    public IReadOnlyList<SweepArm> Arms { get; }
    public IReadOnlyList<string> ThemeWords { get; }
    public SteeringGoal Goal { get; }
    public BehaviourMeasure Behaviour { get; }
    public SweepOptions Options { get; }
    /// <summary>Everything that changes a row's raw measures; a resumed sweep must have the same.</summary>
    public IReadOnlyDictionary<string, string> Settings { get; }

    /// <summary>Packs built from a seed feature's flow graph: every mode × layer × schedule of the grid.</summary>
    public static SweepPlan ForFeature(FlowGraph graph, SaeSet saes, ModelManifest manifest, FeatureRecipe recipe,
        SweepOptions options)
    {
        var value = recipe.ResolvedValue;
        foreach (var l in options.Layers ?? [])
            if (l < graph.LStart || l > graph.LEnd)
                throw new ArgumentException($"layer {l} is outside the flow graph's span {graph.LStart}..{graph.LEnd}");
        var chosen = options.Layers?.Distinct().Order().ToArray()
            ?? Enumerable.Range(graph.LStart, graph.LEnd - graph.LStart + 1).ToArray();
        var families = new List<SweepFamily>();
        foreach (var mode in options.Modes.Distinct())
            foreach (var schedule in options.Schedules.Distinct())
            {
                int?[] modeLayers = mode == SweepMode.Baseline
                    ? [graph.Seed.Site.Layer]
                    : [.. chosen.Select(l => (int?)l)];
                foreach (var layer in modeLayers)
                {
                    var name = Kebab(mode) + (layer is { } l ? $"-{l}" : "") + "-" + Kebab(schedule);
                    var pack = PackBuilder.Build(graph, [], saes, manifest, new PackBuildOptions
                    {
                        Name = name,
                        Mode = mode switch
                        {
                            SweepMode.Single => PackMode.SingleLayer,
                            SweepMode.Cumulative => PackMode.Cumulative,
                            _ => PackMode.Baseline,
                        },
                        Layer = layer,
                        Schedule = schedule,
                        Operation = recipe.Operation,
                        Value = value,
                        ThresholdUnits = recipe.ThresholdUnits,
                        ThemeWords = recipe.ThemeWords,
                    });
                    families.Add(new SweepFamily(Kebab(mode), layer, Kebab(schedule), pack));
                }
            }
        var settings = Common(manifest, options, recipe.ThemeWords);
        settings["subject"] = graph.Seed.ToString();
        settings["flow_graph"] =
            string.Join(",", graph.Nodes.Select(n => n.Feature.Short).Order(StringComparer.Ordinal));
        settings["operation"] = recipe.Operation.ToString().ToLowerInvariant();
        settings["value"] = value.ToString("R", CultureInfo.InvariantCulture);
        settings["units"] = recipe.ThresholdUnits && recipe.Operation != PackOperation.Rescale ? "threshold" : "raw";
        var goal = recipe.Operation == PackOperation.Rescale ? SteeringGoal.Suppress : SteeringGoal.Promote;
        return new SweepPlan(graph.Seed.Short, graph.Seed, graph, families, recipe.ThemeWords, goal, options, settings);
    }

    /// <summary>An existing pack as built: one family swept over strengths; theme words default to the pack's.</summary>
    public static SweepPlan ForPack(SteeringPack pack, ModelManifest manifest, IReadOnlyList<string>? themeWords,
        SweepOptions options)
    {
        var seed = FeatureId.Parse(pack.Metadata.Seed.Split(',')[0]);
        var words = themeWords is { Count: > 0 } ? themeWords : pack.Metadata.ThemeWords;
        var settings = Common(manifest, options, words);
        settings["subject"] = $"{pack.Name}@{pack.Metadata.ContentSha256}";
        var goal = pack.Metadata.Operation == "rescale" ? SteeringGoal.Suppress : SteeringGoal.Promote;
        var family = new SweepFamily("pack", null, pack.Metadata.Schedule, pack);
        return new SweepPlan($"pack {pack.Name}", seed, null, [family], words, goal, options, settings);
    }

    private static SortedDictionary<string, string> Common(ModelManifest manifest, SweepOptions o,
        IReadOnlyList<string> themeWords) => new(StringComparer.Ordinal)
        {
            ["model"] = SteeringPack.Fingerprint(manifest),
            ["tokens"] = o.Tokens.ToString(CultureInfo.InvariantCulture),
            ["temperature"] = o.Temperature.ToString("R", CultureInfo.InvariantCulture),
            ["top_p"] = o.TopP.ToString("R", CultureInfo.InvariantCulture),
            ["theme_words"] =
                string.Join(",", themeWords.Select(w => w.ToLowerInvariant()).Order(StringComparer.Ordinal)),
        };

    private static string Kebab<T>(T value) where T : Enum => value.ToString().ToLowerInvariant();
}
