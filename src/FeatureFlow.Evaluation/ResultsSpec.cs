using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using FeatureFlow.Flow;

namespace FeatureFlow.Evaluation;

/// <summary>Sampling shared by every sweep of a results run.</summary>
public sealed record ResultsSweepSettings(int Seeds, int Tokens, float Temperature, float TopP,
    IReadOnlyList<string> Prompts);

/// <summary>Hook fidelity on fresh stories (as <c>sae fidelity --tokens N --seed S</c>).</summary>
public sealed record ResultsFidelitySettings(int Tokens, ulong Seed)
{
    /// <summary>Fresh stories are this long, as <c>sae fidelity</c> makes them.</summary>
    public const int StoryTokens = 128;
}

/// <summary>One chain-length census of the shipped flow map; null thresholds are the map's chance level.</summary>
public sealed record ResultsChainSettings(string Label, float? Cut, float? ModuleThreshold);

/// <summary>
/// The rule that picks a pack's default strength: among the family's cells whose mean perplexity is at most
/// <see cref="MaxPerplexityRatio"/> × the unsteered mean and whose mean behaviour is above the unsteered mean, the
/// highest mean combined score (ties to the smaller strength); a shipped pack needs terms on
/// <see cref="MinBlocks"/> blocks or more.
/// </summary>
public sealed record ShipRule(double MaxPerplexityRatio, int MinBlocks);

/// <summary>The paper's match-validation figures (Laptev et al. 2025), to set ours against.</summary>
public sealed record PaperMatchFigures(double Top1Success, double Top1Change, double ExhaustiveSuccess,
    double ExhaustiveChange);

/// <summary>One sweep of a theme: the recipe's coefficient at strength 1, its units and the strength grid.</summary>
public sealed record ThemeSweepSpec(string Variant, float Value, bool ThresholdUnits, IReadOnlyList<float> Strengths);

/// <summary>A theme: a seed feature, its flow graph's thresholds, the operation, theme words and its sweeps.</summary>
public sealed record ThemeSpec(string Name, string Title, FeatureId Seed, PackOperation Operation,
    IReadOnlyList<string> ThemeWords, float? Cut, float? ModuleThreshold, IReadOnlyList<ThemeSweepSpec> Sweeps);

/// <summary>A pack to ship from a theme's sweep: the family (mode and layer) whose strength the rule picks.</summary>
public sealed record PackSpec(string Name, string Theme, string Sweep, SweepMode Mode, int? Layer, string Description);

/// <summary>
/// The checked-in input of <c>featureflow eval results</c> (JSON, snake_case). Every error names the field:
/// <c>themes[1].strengths[2]: expected a finite number</c>.
/// </summary>
public sealed record ResultsSpec(
    ResultsSweepSettings Sweep,
    MatchValidationOptions Matches,
    ResultsFidelitySettings Fidelity,
    IReadOnlyList<ResultsChainSettings> Chains,
    int SmallStrengths,
    PaperMatchFigures Paper,
    ShipRule Rule,
    IReadOnlyList<ThemeSpec> Themes,
    IReadOnlyList<PackSpec> Packs)
{
    public static ResultsSpec Load(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"no results spec at {path}", path);
        try
        {
            return Parse(File.ReadAllText(path));
        }
        catch (InvalidDataException e)
        {
            throw new InvalidDataException($"{path}: {e.Message}", e);
        }
    }

    public static ResultsSpec Parse(string json)
    {
        JsonNode? root;
        try
        {
            root = JsonNode.Parse(json, documentOptions: new JsonDocumentOptions { AllowTrailingCommas = true });
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"not valid JSON ({e.Message})", e);
        }
        var spec = new Reader(root, "spec", "about", "sweep", "matches", "fidelity", "chains", "verdicts", "paper",
            "ship_rule", "themes", "packs");

        var sweep = spec.Object("sweep", "seeds", "tokens", "temperature", "top_p", "prompts");
        var sweepSettings = new ResultsSweepSettings(sweep.Int("seeds", min: 1), sweep.Int("tokens", min: 1),
            sweep.Float("temperature", min: 0), sweep.Float("top_p", min: 0, max: 1),
            sweep.Has("prompts") ? sweep.Strings("prompts", allowEmpty: true) : SweepOptions.DefaultPrompts);
        if (sweepSettings.Prompts.Distinct(StringComparer.Ordinal).Count() != sweepSettings.Prompts.Count)
            throw sweep.Error("prompts", "a prompt is listed twice");

        var m = spec.Object("matches", "sequences", "tokens", "samples_per_layer", "seed", "temperature", "top_p",
            "deactivation", "epsilon");
        var matches = new MatchValidationOptions
        {
            Sequences = m.Int("sequences", min: 1),
            Tokens = m.Int("tokens", min: 2),
            SamplesPerLayer = m.Int("samples_per_layer", min: 1),
            Seed = m.ULong("seed"),
            Temperature = m.Float("temperature", min: 0),
            TopP = m.Float("top_p", min: 0, max: 1),
            Deactivation = m.Enum<Deactivation>("deactivation"),
            Epsilon = m.Float("epsilon", min: 0),
        };

        var f = spec.Object("fidelity", "tokens", "seed");
        var fidelity = new ResultsFidelitySettings(f.Int("tokens", min: ResultsFidelitySettings.StoryTokens),
            f.ULong("seed"));

        var chains = spec.Objects("chains", "label", "cut", "module_threshold")
            .Select(c => new ResultsChainSettings(c.String("label"), c.OptionalFloat("cut"),
                c.OptionalFloat("module_threshold")))
            .ToArray();
        spec.Unique("chains", chains.Select(c => c.Label), "label");

        var verdicts = spec.Object("verdicts", "small_strengths");
        var p = spec.Object("paper", "top1_success", "top1_change", "exhaustive_success", "exhaustive_change");
        var paper = new PaperMatchFigures(p.Float("top1_success", 0, 1), p.Float("top1_change", max: 1),
            p.Float("exhaustive_success", 0, 1), p.Float("exhaustive_change", max: 1));
        var r = spec.Object("ship_rule", "max_perplexity_ratio", "min_blocks");
        var rule = new ShipRule(r.Float("max_perplexity_ratio", min: 1), r.Int("min_blocks", min: 1));

        var themes = spec.Objects("themes", "name", "title", "seed", "operation", "theme_words", "cut",
            "module_threshold", "sweeps").Select(ReadTheme).ToArray();
        spec.Unique("themes", themes.Select(t => t.Name), "name");

        var packs = spec.Objects("packs", "name", "theme", "sweep", "mode", "layer", "description")
            .Select(o => ReadPack(o, themes)).ToArray();
        spec.Unique("packs", packs.Select(x => x.Name), "name");

        return new ResultsSpec(sweepSettings, matches, fidelity, chains, verdicts.Int("small_strengths", min: 1),
            paper, rule, themes, packs);
    }

    private static ThemeSpec ReadTheme(Reader t)
    {
        var name = t.Name("name");
        var operation = t.Enum<PackOperation>("operation");
        if (operation == PackOperation.Clamp)
            throw t.Error("operation", "clamp is not swept here: give promote or rescale");
        var sweeps = t.Objects("sweeps", "variant", "value", "units", "strengths").Select(s => new ThemeSweepSpec(
            s.Name("variant"), s.Float("value"), s.String("units") switch
            {
                "raw" => false,
                "threshold" => true,
                _ => throw s.Error("units", "expected raw or threshold"),
            }, s.Floats("strengths", min: 0))).ToArray();
        if (sweeps.Length == 0) throw t.Error("sweeps", "give at least one sweep");
        t.Unique("sweeps", sweeps.Select(s => s.Variant), "variant");
        FeatureId seed;
        try
        {
            seed = FeatureId.Parse(t.String("seed"));
        }
        catch (Exception e) when (e is FormatException or ArgumentException)
        {
            throw t.Error("seed", e.Message);
        }
        return new ThemeSpec(name, t.String("title"), seed, operation, t.Strings("theme_words", allowEmpty: false),
            t.OptionalFloat("cut"), t.OptionalFloat("module_threshold"), sweeps);
    }

    private static PackSpec ReadPack(Reader o, IReadOnlyList<ThemeSpec> themes)
    {
        var themeName = o.String("theme");
        var theme = themes.FirstOrDefault(t => t.Name == themeName)
            ?? throw o.Error("theme",
                $"no theme named '{themeName}' (themes: {string.Join(", ", themes.Select(t => t.Name))})");
        var sweep = o.Has("sweep") ? o.String("sweep") : theme.Sweeps[0].Variant;
        if (theme.Sweeps.All(s => s.Variant != sweep))
            throw o.Error("sweep", $"theme '{themeName}' has no sweep '{sweep}' " +
                $"({string.Join(", ", theme.Sweeps.Select(s => s.Variant))})");
        var mode = o.Enum<SweepMode>("mode");
        int? layer = o.Has("layer") ? o.Int("layer", min: 0) : null;
        if (mode != SweepMode.Baseline && layer is null) throw o.Error("layer", "single and cumulative need a layer");
        if (mode == SweepMode.Baseline && layer is not null) throw o.Error("layer", "baseline has no layer");
        return new PackSpec(o.Name("name"), themeName, sweep, mode, layer, o.String("description"));
    }

    /// <summary>Reads one JSON object, naming the path of every field it complains about.</summary>
    private sealed class Reader
    {
        private readonly JsonObject _node;
        private readonly string _path;

        public Reader(JsonNode? node, string path, params string[] fields)
        {
            _path = path;
            _node = node as JsonObject ?? throw new InvalidDataException($"{path}: expected an object");
            foreach (var (key, _) in _node)
                if (!fields.Contains(key))
                    throw new InvalidDataException(
                        $"{Field(key)}: unknown field (expected {string.Join(", ", fields)})");
        }

        public InvalidDataException Error(string field, string message) => new($"{Field(field)}: {message}");

        public bool Has(string field) => _node[field] is not null;

        public Reader Object(string field, params string[] fields) => new(Required(field), Field(field), fields);

        public IReadOnlyList<Reader> Objects(string field, params string[] fields) =>
            Array(field).Select((n, i) => new Reader(n, $"{Field(field)}[{i}]", fields)).ToArray();

        public string String(string field) =>
            Required(field) is JsonValue v && v.TryGetValue<string>(out var s)
                ? s
                : throw Error(field, "expected a string");

        /// <summary>A name used in folder and file names: lower-case letters, digits and '-'.</summary>
        public string Name(string field)
        {
            var s = String(field);
            if (s.Length == 0 || !s.All(c => c is >= 'a' and <= 'z' or >= '0' and <= '9' or '-'))
                throw Error(field, $"'{s}' must be lower-case letters, digits and '-'");
            return s;
        }

        public IReadOnlyList<string> Strings(string field, bool allowEmpty)
        {
            var items = Array(field).Select((n, i) => n is JsonValue v && v.TryGetValue<string>(out var s)
                ? s
                : throw new InvalidDataException($"{Field(field)}[{i}]: expected a string")).ToArray();
            if (items.Length == 0) throw Error(field, "give at least one");
            if (!allowEmpty && items.Any(s => s.Trim().Length == 0)) throw Error(field, "an entry is empty");
            return items;
        }

        public IReadOnlyList<float> Floats(string field, double min)
        {
            var items = Array(field).Select((n, i) => Number(n, $"{Field(field)}[{i}]", min, double.MaxValue))
                .Select(v => (float)v).ToArray();
            if (items.Length == 0) throw Error(field, "give at least one");
            if (items.Distinct().Count() != items.Length) throw Error(field, "a value is listed twice");
            return items;
        }

        public float Float(string field, double min = double.MinValue, double max = double.MaxValue) =>
            (float)Number(Required(field), Field(field), min, max);

        public float? OptionalFloat(string field) => Has(field) ? Float(field) : null;

        public int Int(string field, int min)
        {
            var v = Number(Required(field), Field(field), min, int.MaxValue);
            return v == Math.Floor(v) ? (int)v : throw Error(field, $"expected a whole number, got {Format(v)}");
        }

        public ulong ULong(string field) =>
            Required(field) is JsonValue v && v.TryGetValue<ulong>(out var u)
                ? u
                : throw Error(field, "expected a whole number ≥ 0");

        public T Enum<T>(string field) where T : struct, Enum
        {
            var s = String(field);
            return System.Enum.TryParse<T>(s, ignoreCase: true, out var e) && System.Enum.IsDefined(e)
                ? e
                : throw Error(field,
                    $"'{s}' is not one of {string.Join(", ", System.Enum.GetNames<T>()).ToLowerInvariant()}");
        }

        public void Unique(string field, IEnumerable<string> names, string key)
        {
            var twice = names.GroupBy(n => n).FirstOrDefault(g => g.Count() > 1);
            if (twice is not null) throw Error(field, $"{key} '{twice.Key}' is used twice");
        }

        private string Field(string field) => $"{_path}.{field}";

        private JsonNode Required(string field) => _node[field] ?? throw Error(field, "missing");

        private JsonArray Array(string field) => Required(field) as JsonArray ?? throw Error(field, "expected a list");

        private static double Number(JsonNode? node, string path, double min, double max)
        {
            if (node is not JsonValue v || !v.TryGetValue<double>(out var d) || !double.IsFinite(d))
                throw new InvalidDataException($"{path}: expected a finite number");
            if (d < min || d > max)
                throw new InvalidDataException($"{path}: {Format(d)} is outside {Format(min)}..{Format(max)}");
            return d;
        }

        private static string Format(double v) => v switch
        {
            double.MaxValue or >= int.MaxValue => "∞",
            double.MinValue => "−∞",
            _ => v.ToString("G6", CultureInfo.InvariantCulture),
        };
    }
}
