using System.Text;
using FeatureFlow.Models.Tokenization;

namespace FeatureFlow.Engine;

/// <summary>
/// Turns generated tokens into text as it becomes final: holds back bytes of an unfinished UTF-8
/// character, and text that might still grow into a stop string. Reports when a stop string appears
/// (the stop string and everything after it are never emitted).
/// </summary>
public sealed class TextStream(ITokenizer tokenizer, int previousToken, IReadOnlyList<string> stops)
{
    private readonly Decoder _utf8 = new UTF8Encoding(false, false).GetDecoder();
    private readonly StringBuilder _held = new();
    private readonly char[] _chars = new char[64];
    private int _previous = previousToken;

    public bool Stopped { get; private set; }

    /// <summary>Adds a token and returns the text that is now final (possibly empty).</summary>
    public string Push(int token)
    {
        var bytes = tokenizer.DecodePiece(_previous, token);
        _previous = token;
        var charCount = _utf8.GetCharCount(bytes, flush: false);
        var chars = charCount <= _chars.Length ? _chars : new char[charCount];
        var written = _utf8.GetChars(bytes, chars, flush: false);
        _held.Append(chars, 0, written);
        return Release(final: false);
    }

    /// <summary>Releases everything still held (at the end of generation).</summary>
    public string Flush()
    {
        var chars = new char[8];
        var written = _utf8.GetChars(ReadOnlySpan<byte>.Empty, chars, flush: true);
        _held.Append(chars, 0, written);
        return Release(final: true);
    }

    private string Release(bool final)
    {
        if (Stopped) return "";
        var text = _held.ToString();
        var stopAt = -1;
        foreach (var stop in stops)
        {
            var at = text.IndexOf(stop, StringComparison.Ordinal);
            if (at >= 0 && (stopAt < 0 || at < stopAt)) stopAt = at;
        }
        if (stopAt >= 0)
        {
            Stopped = true;
            _held.Clear();
            return text[..stopAt];
        }
        var keep = final ? 0 : LongestStopPrefixSuffix(text);
        _held.Remove(0, text.Length - keep);
        return text[..^keep];
    }

    /// <summary>Length of the longest tail of <paramref name="text"/> that begins some stop string.</summary>
    private int LongestStopPrefixSuffix(string text)
    {
        var best = 0;
        foreach (var stop in stops)
            for (var len = Math.Min(stop.Length - 1, text.Length); len > best; len--)
                if (text.AsSpan(text.Length - len).SequenceEqual(stop.AsSpan(0, len)))
                {
                    best = len;
                    break;
                }
        return best;
    }
}
