using System.Globalization;
using System.Text;

namespace FeatureFlow.Models.Tokenization;

/// <summary>
/// A tokenizer.json <c>decoder</c>, token by token: the bytes each vocabulary piece stands for, and how many
/// leading spaces the first piece of a text loses (Llama's <c>Strip</c> after <c>Fuse</c>, Metaspace's prefix).
/// </summary>
internal sealed class HfDecoder
{
    private const string Supported = "Sequence, ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip";

    // Each step rewrites one piece; a piece is text until ByteLevel or ByteFallback turns it into bytes.
    private readonly Func<Piece, Piece>[] _steps;

    private HfDecoder(Func<Piece, Piece>[] steps, int leadingSpacesStripped)
    {
        _steps = steps;
        LeadingSpacesStripped = leadingSpacesStripped;
    }

    /// <summary>Spaces removed from the start of the first piece of a text.</summary>
    public int LeadingSpacesStripped { get; }

    public byte[] Decode(string piece)
    {
        var current = new Piece(piece, null);
        foreach (var step in _steps) current = step(current);
        return current.Bytes ?? Encoding.UTF8.GetBytes(current.Text!);
    }

    public static HfDecoder Parse(HfJson? json)
    {
        var steps = new List<Func<Piece, Piece>>();
        var strip = 0;
        var fused = false;
        if (json is { } decoder) Add(decoder, steps, ref strip, ref fused);
        return new HfDecoder(steps.ToArray(), strip);
    }

    private readonly record struct Piece(string? Text, byte[]? Bytes)
    {
        public Piece MapText(Func<string, string> map) => Text is null ? this : new Piece(map(Text), null);
    }

    private static void Add(HfJson json, List<Func<Piece, Piece>> steps, ref int strip, ref bool fused)
    {
        switch (json.Type)
        {
            case "Sequence":
                foreach (var inner in json.Required("decoders").Array()) Add(inner, steps, ref strip, ref fused);
                break;
            case "ByteLevel":
                steps.Add(p => p.Text is { } text && ByteLevelAlphabet.Unmap(text) is { } bytes ? new Piece(null, bytes) : p);
                break;
            case "ByteFallback":
                steps.Add(p => p.Text is { } text && ByteFallbackByte(text) is { } b ? new Piece(null, [b]) : p);
                break;
            case "Replace":
                var pattern = json.Required("pattern").Pattern();
                var content = json.Required("content").String().Replace("$", "$$", StringComparison.Ordinal);
                steps.Add(p => p.MapText(text => pattern.Replace(text, content)));
                break;
            case "Fuse":
                // Joining pieces changes nothing piece by piece; it only makes a later Strip act on the whole text.
                fused = true;
                break;
            case "Strip":
                if (json.Required("content").String() != " " || json.OptionalInt("stop", 0) != 0 || !fused)
                    throw json.Error($"{json.Path}: only Strip of leading spaces after Fuse is supported");
                strip += json.OptionalInt("start", 0);
                break;
            case "Metaspace":
                var replacement = json.Required("replacement").String();
                var scheme = json.Optional("prepend_scheme")?.String()
                             ?? (json.OptionalBool("add_prefix_space", true) ? "always" : "never");
                steps.Add(p => p.MapText(text => text.Replace(replacement, " ", StringComparison.Ordinal)));
                if (scheme != "never") strip += 1;
                break;
            case var other: throw json.Unsupported(other, Supported);
        }
    }

    private static byte? ByteFallbackByte(string text) =>
        text.Length == 6 && text.StartsWith("<0x", StringComparison.Ordinal) && text[5] == '>'
        && byte.TryParse(text.AsSpan(3, 2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out var b)
            ? b
            : null;
}
