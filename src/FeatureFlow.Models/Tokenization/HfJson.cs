using System.Text.Json;
using System.Text.RegularExpressions;

namespace FeatureFlow.Models.Tokenization;

/// <summary>
/// One element of a Hugging Face tokenizer file with its path from the root (<c>model.vocab</c>,
/// <c>decoder.decoders[2]</c>), so every complaint names the file and the field.
/// </summary>
internal readonly record struct HfJson(string File, string Path, JsonElement Element)
{
    public static JsonDocument Parse(string file)
    {
        if (!System.IO.File.Exists(file)) throw new FileNotFoundException($"tokenizer not found: {file}", file);
        try
        {
            using var stream = System.IO.File.OpenRead(file);
            return JsonDocument.Parse(stream, new JsonDocumentOptions { MaxDepth = 256 });
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{file}: not valid JSON (line {e.LineNumber + 1}): {e.Message}", e);
        }
    }

    public static HfJson Root(string file, JsonDocument document) => new(file, "", document.RootElement);

    public HfJson Required(string name) =>
        Optional(name) ?? throw Error($"{Child(name)} is missing");

    /// <summary>The field, or null when it is absent or JSON null.</summary>
    public HfJson? Optional(string name)
    {
        ExpectKind(JsonValueKind.Object);
        return Element.TryGetProperty(name, out var value) && value.ValueKind != JsonValueKind.Null
            ? new HfJson(File, Child(name), value)
            : null;
    }

    public string Type => Required("type").String();

    public string String()
    {
        ExpectKind(JsonValueKind.String);
        return Element.GetString()!;
    }

    public int Int()
    {
        ExpectKind(JsonValueKind.Number);
        return Element.TryGetInt32(out var value) ? value : throw Error($"{Path} should be a 32-bit integer, found {Element}");
    }

    public double Double()
    {
        ExpectKind(JsonValueKind.Number);
        return Element.GetDouble();
    }

    public bool Bool()
    {
        if (Element.ValueKind is JsonValueKind.True or JsonValueKind.False) return Element.GetBoolean();
        throw Error($"{Path} should be true or false, found {Element.ValueKind}");
    }

    public bool OptionalBool(string name, bool fallback) => Optional(name)?.Bool() ?? fallback;

    public int OptionalInt(string name, int fallback) => Optional(name)?.Int() ?? fallback;

    public IEnumerable<HfJson> Array()
    {
        ExpectKind(JsonValueKind.Array);
        var path = Path;
        var file = File;
        return Element.EnumerateArray().Select((e, i) => new HfJson(file, $"{path}[{i}]", e));
    }

    public IEnumerable<(string Name, HfJson Value)> Properties()
    {
        ExpectKind(JsonValueKind.Object);
        var self = this;
        return Element.EnumerateObject().Select(p => (p.Name, new HfJson(self.File, self.Child(p.Name), p.Value)));
    }

    /// <summary>A <c>{"String": ...}</c> or <c>{"Regex": ...}</c> pattern, as a regular expression.</summary>
    public Regex Pattern()
    {
        if (Optional("String") is { } literal) return new Regex(Regex.Escape(literal.String()), RegexOptions.CultureInvariant);
        if (Optional("Regex") is { } regex)
        {
            try { return new Regex(regex.String(), RegexOptions.CultureInvariant); }
            catch (ArgumentException e) { throw Error($"{Path}.Regex is not a regular expression .NET accepts: {e.Message}"); }
        }
        throw Error($"{Path} should hold \"String\" or \"Regex\"");
    }

    public InvalidDataException Error(string message) => new($"{File}: {message}");

    public InvalidDataException Unsupported(string kind, string supported) =>
        Error($"{Child("type")} '{kind}' is not supported (supported: {supported})");

    private string Child(string name) => Path.Length == 0 ? name : $"{Path}.{name}";

    private void ExpectKind(JsonValueKind kind)
    {
        if (Element.ValueKind != kind)
        {
            var what = Path.Length == 0 ? "the root" : Path;
            throw Error($"{what} should be {Describe(kind)}, found {Describe(Element.ValueKind)}");
        }
    }

    private static string Describe(JsonValueKind kind) => kind switch
    {
        JsonValueKind.Object => "an object",
        JsonValueKind.Array => "an array",
        JsonValueKind.String => "a string",
        JsonValueKind.Number => "a number",
        _ => kind.ToString().ToLowerInvariant(),
    };
}
