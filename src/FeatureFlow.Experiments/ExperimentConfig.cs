using System.Collections.ObjectModel;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using YamlDotNet.Core;
using YamlDotNet.RepresentationModel;

namespace FeatureFlow.Experiments;

/// <summary>One arm; <paramref name="SteeringJson"/> is a featureflow.v1.SteeringSpec as compact protobuf JSON.
/// </summary>
public sealed record ExperimentArm(string Name, double Weight, string SteeringJson);

/// <summary>An experiment; <paramref name="Traffic"/> is the enrolled share of subjects, in (0, 1].</summary>
public sealed record Experiment(string Name, string Salt, double Traffic, string Control,
    IReadOnlyList<ExperimentArm> Arms);

/// <summary>The experiments of one config file (YAML, or JSON, which YAML reads too).
/// Schema: docs/experiments.md.</summary>
public sealed partial class ExperimentConfig
{
    private ExperimentConfig(IReadOnlyDictionary<string, Experiment> experiments) => Experiments = experiments;

    public static ExperimentConfig Empty { get; } =
        new(new ReadOnlyDictionary<string, Experiment>(new Dictionary<string, Experiment>(StringComparer.Ordinal)));

    public IReadOnlyDictionary<string, Experiment> Experiments { get; }

    public static ExperimentConfig Load(string path) => Parse(File.ReadAllText(path), path);

    /// <summary>Parses and checks a config; any problem throws <see cref="InvalidDataException"/>
    /// whose message starts with "<paramref name="sourceName"/>: field.path: ".</summary>
    public static ExperimentConfig Parse(string text, string sourceName)
    {
        ArgumentNullException.ThrowIfNull(text);
        var stream = new YamlStream();
        try
        {
            stream.Load(new StringReader(text));
        }
        catch (YamlException e)
        {
            throw new InvalidDataException(
                $"{sourceName}: line {e.Start.Line}, column {e.Start.Column}: {Innermost(e).Message}", e);
        }
        if (stream.Documents.Count > 1)
            throw new InvalidDataException($"{sourceName}: expected one YAML document, got {stream.Documents.Count}");
        if (stream.Documents.Count == 0 || IsNull(stream.Documents[0].RootNode)) return Empty;
        return new Reader(sourceName).Config(stream.Documents[0].RootNode);
    }

    private static Exception Innermost(Exception e) => e.InnerException is YamlException inner ? Innermost(inner) : e;

    private static bool IsNull(YamlNode? node) =>
        node is null || node is YamlScalarNode { Style: ScalarStyle.Plain or ScalarStyle.Any } s
            && s.Value is null or "" or "~" or "null" or "Null" or "NULL";

    [GeneratedRegex(@"^[a-z0-9][a-z0-9._-]{0,63}\z")]
    private static partial Regex NamePattern();

    private sealed class Reader(string source)
    {
        private static readonly string[] TopKeys = ["experiments"];
        private static readonly string[] ExperimentKeys = ["name", "salt", "traffic", "control", "arms"];
        private static readonly string[] ArmKeys = ["name", "weight", "steering"];

        public ExperimentConfig Config(YamlNode root)
        {
            var top = Mapping(root, "", TopKeys);
            var experiments = new Dictionary<string, Experiment>(StringComparer.Ordinal);
            if (!top.TryGetValue("experiments", out var list) || IsNull(list))
                return new ExperimentConfig(experiments.AsReadOnly());
            var items = Sequence(list, "experiments");
            for (var i = 0; i < items.Count; i++)
            {
                var path = $"experiments[{i}]";
                var e = Experiment(items[i], path);
                if (!experiments.TryAdd(e.Name, e))
                    throw Error($"{path}.name", $"duplicate experiment name '{e.Name}'");
            }
            return new ExperimentConfig(experiments.AsReadOnly());
        }

        private Experiment Experiment(YamlNode node, string path)
        {
            var fields = Mapping(node, path, ExperimentKeys);
            var name = Name(fields, path);
            var salt = Text(Required(fields, "salt", path), $"{path}.salt");
            var traffic = 1.0;
            if (fields.TryGetValue("traffic", out var t))
            {
                traffic = Number(t, $"{path}.traffic", "must be a number in (0, 1]");
                if (!(traffic > 0 && traffic <= 1))
                    throw Error($"{path}.traffic", $"must be a number in (0, 1], got {t}");
            }
            var armNodes = Sequence(Required(fields, "arms", path), $"{path}.arms");
            if (armNodes.Count < 2) throw Error($"{path}.arms", $"needs at least 2 arms, got {armNodes.Count}");
            var arms = new List<ExperimentArm>(armNodes.Count);
            for (var i = 0; i < armNodes.Count; i++)
            {
                var arm = Arm(armNodes[i], $"{path}.arms[{i}]");
                if (arms.Any(a => a.Name == arm.Name))
                    throw Error($"{path}.arms[{i}].name", $"duplicate arm name '{arm.Name}'");
                arms.Add(arm);
            }
            var control = arms[0].Name;
            if (fields.TryGetValue("control", out var c))
            {
                control = Text(c, $"{path}.control");
                if (arms.All(a => a.Name != control))
                    throw Error($"{path}.control",
                        $"names no arm: '{control}' (arms: {string.Join(", ", arms.Select(a => a.Name))})");
            }
            return new Experiment(name, salt, traffic, control, arms.AsReadOnly());
        }

        private ExperimentArm Arm(YamlNode node, string path)
        {
            var fields = Mapping(node, path, ArmKeys);
            var name = Name(fields, path);
            const string rule = "must be a finite number > 0";
            var w = Required(fields, "weight", path);
            var weight = Number(w, $"{path}.weight", rule);
            if (!(weight > 0 && double.IsFinite(weight))) throw Error($"{path}.weight", $"{rule}, got {w}");
            var steering = "{}";
            if (fields.TryGetValue("steering", out var s) && !IsNull(s))
            {
                if (s is not YamlMappingNode)
                    throw Error($"{path}.steering", $"must be a mapping (a SteeringSpec), got {Kind(s)}");
                steering = YamlJson.Write(s);
            }
            return new ExperimentArm(name, weight, steering);
        }

        private string Name(Dictionary<string, YamlNode> fields, string path)
        {
            var name = Text(Required(fields, "name", path), $"{path}.name");
            if (!NamePattern().IsMatch(name))
                throw Error($"{path}.name",
                    "must match [a-z0-9][a-z0-9._-]{0,63} (lower-case letters, digits, '.', '_', '-'), " +
                    $"got '{name}'");
            return name;
        }

        private Dictionary<string, YamlNode> Mapping(YamlNode node, string path, string[] allowed)
        {
            if (node is not YamlMappingNode map) throw Error(path, $"must be a mapping, got {Kind(node)}");
            var fields = new Dictionary<string, YamlNode>(StringComparer.Ordinal);
            foreach (var (k, v) in map.Children)
            {
                var key = k is YamlScalarNode { Value: { } text } ? text : null;
                if (key is null || !allowed.Contains(key))
                    throw Error(Join(path, key ?? $"<{Kind(k)}>"),
                        $"unknown key (allowed here: {string.Join(", ", allowed)})");
                fields[key] = v;
            }
            return fields;
        }

        private IList<YamlNode> Sequence(YamlNode node, string path) =>
            node is YamlSequenceNode seq ? seq.Children : throw Error(path, $"must be a list, got {Kind(node)}");

        private YamlNode Required(Dictionary<string, YamlNode> fields, string key, string path) =>
            fields.TryGetValue(key, out var node) && !IsNull(node) ? node : throw Error(Join(path, key), "is required");

        private string Text(YamlNode node, string path) =>
            node is YamlScalarNode { Value: { } text }
                ? text
                : throw Error(path, $"must be a string, got {Kind(node)}");

        private double Number(YamlNode node, string path, string rule)
        {
            if (node is YamlScalarNode { Value: { } text } && YamlJson.TryNumber(text, out var value)) return value;
            throw Error(path, $"{rule}, got {(node is YamlScalarNode ? $"'{node}'" : Kind(node))}");
        }

        private InvalidDataException Error(string path, string message) => new($"{source}: {path}: {message}");

        private static string Join(string path, string key) => path.Length == 0 ? key : $"{path}.{key}";

        private static string Kind(YamlNode node) => node switch
        {
            YamlMappingNode => "a mapping",
            YamlSequenceNode => "a list",
            _ => $"'{node}'",
        };
    }
}

/// <summary>Re-serializes a YAML subtree as compact JSON, reading plain scalars by the YAML 1.2 core schema.</summary>
internal static partial class YamlJson
{
    public static string Write(YamlNode node)
    {
        using var buffer = new MemoryStream();
        using (var writer = new Utf8JsonWriter(buffer))
            Write(writer, node);
        return Encoding.UTF8.GetString(buffer.ToArray());
    }

    /// <summary>YAML 1.2 core-schema numbers: decimal, 0x hex, 0o octal, ±.inf and .nan.</summary>
    public static bool TryNumber(string text, out double value)
    {
        switch (text)
        {
            case ".inf" or ".Inf" or ".INF" or "+.inf" or "+.Inf" or "+.INF":
                value = double.PositiveInfinity;
                return true;
            case "-.inf" or "-.Inf" or "-.INF":
                value = double.NegativeInfinity;
                return true;
            case ".nan" or ".NaN" or ".NAN":
                value = double.NaN;
                return true;
        }
        if (text.StartsWith("0x", StringComparison.Ordinal)
            && ulong.TryParse(text.AsSpan(2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture,
                out var hex))
        {
            value = hex;
            return true;
        }
        if (text.StartsWith("0o", StringComparison.Ordinal) && text.Length > 2
            && text[2..].All(c => c is >= '0' and <= '7'))
        {
            value = text[2..].Aggregate(0.0, (acc, c) => acc * 8 + (c - '0'));
            return true;
        }
        value = 0;
        return text.Length > 0 && text.All(c => char.IsAsciiDigit(c) || c is '.' or '-' or '+' or 'e' or 'E')
            && double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out value);
    }

    private static void Write(Utf8JsonWriter w, YamlNode node)
    {
        switch (node)
        {
            case YamlMappingNode map:
                w.WriteStartObject();
                foreach (var (k, v) in map.Children)
                {
                    w.WritePropertyName(k is YamlScalarNode { Value: { } key } ? key : k.ToString());
                    Write(w, v);
                }
                w.WriteEndObject();
                break;
            case YamlSequenceNode seq:
                w.WriteStartArray();
                foreach (var item in seq.Children) Write(w, item);
                w.WriteEndArray();
                break;
            case YamlScalarNode s:
                WriteScalar(w, s);
                break;
            default:
                throw new InvalidDataException($"unsupported YAML node {node.NodeType}");
        }
    }

    private static void WriteScalar(Utf8JsonWriter w, YamlScalarNode s)
    {
        var text = s.Value ?? "";
        if (s.Style is not (ScalarStyle.Plain or ScalarStyle.Any))
        {
            w.WriteStringValue(text);
            return;
        }
        switch (text)
        {
            case "" or "~" or "null" or "Null" or "NULL":
                w.WriteNullValue();
                return;
            case "true" or "True" or "TRUE":
                w.WriteBooleanValue(true);
                return;
            case "false" or "False" or "FALSE":
                w.WriteBooleanValue(false);
                return;
        }
        if (!TryNumber(text, out var number))
            w.WriteStringValue(text);
        else if (JsonNumberPattern().IsMatch(text))
            // Verbatim, so 64-bit integers (uint64 fields) keep every digit a double would round away.
            w.WriteRawValue(text);
        else if (double.IsFinite(number))
            w.WriteNumberValue(number);
        else
            // Protobuf's JSON mapping spells non-finite floats as these strings.
            w.WriteStringValue(double.IsNaN(number) ? "NaN" : number > 0 ? "Infinity" : "-Infinity");
    }

    [GeneratedRegex(@"^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?\z")]
    private static partial Regex JsonNumberPattern();
}
