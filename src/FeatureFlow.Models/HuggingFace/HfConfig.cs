using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace FeatureFlow.Models.HuggingFace;

/// <summary>
/// A checkpoint's config.json, read with typed getters whose errors name the file, the key, what was expected and
/// what was found. A JSON null counts as absent, as transformers' own config classes treat it.
/// </summary>
public sealed class HfConfig
{
    public const string FileName = "config.json";

    private readonly JsonObject _json;

    private HfConfig(string path, JsonObject json, string architecture)
    {
        Path = path;
        _json = json;
        Architecture = architecture;
    }

    public string Path { get; }
    /// <summary>The model class the checkpoint was saved from (architectures[0], e.g. "LlamaForCausalLM").</summary>
    public string Architecture { get; }

    public static HfConfig Read(string checkpointDirectory)
    {
        var path = System.IO.Path.Combine(System.IO.Path.GetFullPath(checkpointDirectory), FileName);
        if (!File.Exists(path))
            throw new FileNotFoundException(
                $"no Hugging Face checkpoint at {checkpointDirectory}: {FileName} is missing", path);
        var json = Load(path);
        var architectures = json["architectures"] as JsonArray;
        if (architectures is not { Count: 1 } || architectures[0] is not JsonValue only
            || !only.TryGetValue<string>(out var architecture))
            throw new InvalidDataException($"{path}: architectures: expected one model class name, found "
                + $"{json["architectures"]?.ToJsonString() ?? "nothing"}");
        return new HfConfig(path, json, architecture);
    }

    /// <summary>generation_config.json, read with the same getters (it names no architecture).</summary>
    internal static HfConfig ReadGeneration(string path) => new(path, Load(path), "");

    private static JsonObject Load(string path)
    {
        try
        {
            return JsonNode.Parse(File.ReadAllText(path)) as JsonObject
                ?? throw new InvalidDataException($"{path}: expected a JSON object");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: malformed JSON ({e.Message})", e);
        }
    }

    public bool Has(string key) => _json[key] is not null;

    public int Int(string key) => OptionalInt(key) ?? throw Missing(key, "an integer");

    public int? OptionalInt(string key) => _json[key] switch
    {
        null => null,
        JsonValue v when v.TryGetValue<int>(out var i) => i,
        var other => throw Unsupported(key, "an integer", other),
    };

    public double Number(string key, double defaultValue) => OptionalNumber(key) ?? defaultValue;

    public double? OptionalNumber(string key) => Number(_json[key], key);

    public bool Bool(string key, bool defaultValue) => _json[key] switch
    {
        null => defaultValue,
        JsonValue v when v.TryGetValue<bool>(out var b) => b,
        var other => throw Unsupported(key, "true or false", other),
    };

    public string? String(string key) => _json[key] switch
    {
        null => null,
        JsonValue v when v.TryGetValue<string>(out var s) => s,
        var other => throw Unsupported(key, "a string", other),
    };

    /// <summary>A token id that may be stored as a list (Llama 3 lists several end ids); the first is the main one.
    /// </summary>
    public int? TokenId(string key) => _json[key] switch
    {
        null => null,
        JsonArray { Count: > 0 } list when list[0] is JsonValue v && v.TryGetValue<int>(out var first) => first,
        JsonValue v when v.TryGetValue<int>(out var id) => id,
        var other => throw Unsupported(key, "a token id or a list of them", other),
    };

    /// <summary>A nested object (e.g. rope_scaling) as key → raw JSON node; null when absent.</summary>
    public JsonObject? Object(string key) => _json[key] switch
    {
        null => null,
        JsonObject o => o,
        var other => throw Unsupported(key, "an object", other),
    };

    /// <summary>Refuses a value the exporter cannot write exactly, naming what it can write.</summary>
    public void Require<T>(string key, T found, T expected, string why)
    {
        if (!EqualityComparer<T>.Default.Equals(found, expected))
            throw new InvalidDataException($"{Path}: {key} is {Show(found)}; the exporter supports only "
                + $"{Show(expected)} ({why})");
    }

    /// <summary>A number from a nested object's member, labelled <paramref name="key"/> in errors.</summary>
    public double? Number(JsonNode? node, string key) => node switch
    {
        null => null,
        JsonValue v when v.TryGetValue<double>(out var d) && double.IsFinite(d) => d,
        var other => throw Unsupported(key, "a number", other),
    };

    public InvalidDataException Unsupported(string key, string expected, JsonNode? found) =>
        new($"{Path}: {key}: expected {expected}, found {found?.ToJsonString() ?? "nothing"}");

    public InvalidDataException Missing(string key, string expected) =>
        new($"{Path}: {key} is missing (expected {expected})");

    private static string Show<T>(T value) => value switch
    {
        null => "null",
        string s => $"'{s}'",
        bool b => b ? "true" : "false",
        IFormattable f => f.ToString(null, CultureInfo.InvariantCulture),
        _ => value.ToString() ?? "",
    };
}
