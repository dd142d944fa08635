using System.Text.Unicode;
using FeatureFlow.Models.Tokenization;

namespace FeatureFlow.Engine;

/// <summary>
/// Turns generated tokens into text as it becomes final: holds back bytes of an unfinished UTF-8
/// character, and text that might still grow into a stop string. Reports when a stop string appears
/// (the stop string and everything after it are never emitted).
/// </summary>
/// <remarks>
/// The text accumulates in one buffer that grows by doubling, so a token costs no allocation once the buffer is
/// large enough; text in [0, <see cref="FinalLength"/>) never changes again, which lets a reader on another thread
/// copy it out of <see cref="Buffer"/> while tokens are still being pushed.
/// </remarks>
public sealed class TextStream(ITokenizer tokenizer, int previousToken, IReadOnlyList<string> stops, int capacity = 256)
{
    // The bytes of a UTF-8 character that a token split (at most 3), waiting for the rest; then the next piece.
    private byte[] _bytes = new byte[64];
    private int _pending;
    // An array, so that looking for stop strings after each token enumerates without allocating.
    private readonly string[] _stops = [.. stops];
    private char[] _chars = new char[Math.Max(capacity, 16)];
    private int _length;
    private int _taken;
    private int _previous = previousToken;

    public bool Stopped { get; private set; }

    /// <summary>Characters of final text at the start of <see cref="Buffer"/>.</summary>
    public int FinalLength { get; private set; }

    /// <summary>The buffer the text is in; a new, larger one after it grows (the final text is copied over).</summary>
    public char[] Buffer => _chars;

    /// <summary>Adds a token; the text it makes final is then at the end of [0, <see cref="FinalLength"/>).</summary>
    public void Push(int token)
    {
        if (Stopped) return;
        var bytes = tokenizer.DecodePiece(_previous, token);
        _previous = token;
        Append(bytes, flush: false);
        Release(final: false);
    }

    /// <summary>Makes everything still held final (at the end of generation).</summary>
    public void Flush()
    {
        if (Stopped) return;
        Append(ReadOnlySpan<byte>.Empty, flush: true);
        Release(final: true);
    }

    /// <summary>The final text since the previous call, as a string, for a caller that streams from one thread.</summary>
    public string TakeFinal()
    {
        var text = new string(_chars, _taken, FinalLength - _taken);
        _taken = FinalLength;
        return text;
    }

    /// <summary>
    /// Decodes what is complete of the held bytes and <paramref name="bytes"/>, invalid sequences as U+FFFD (as
    /// UTF8Encoding does); <see cref="Utf8.ToUtf16"/> allocates nothing, where a Decoder does on invalid input.
    /// </summary>
    private void Append(ReadOnlySpan<byte> bytes, bool flush)
    {
        if (_pending + bytes.Length > _bytes.Length) Array.Resize(ref _bytes, 2 * (_pending + bytes.Length));
        bytes.CopyTo(_bytes.AsSpan(_pending));
        var input = _bytes.AsSpan(0, _pending + bytes.Length);
        // A UTF-8 byte decodes to at most one UTF-16 character.
        if (_length + input.Length > _chars.Length)
            Array.Resize(ref _chars, Math.Max(2 * _chars.Length, _length + input.Length));
        Utf8.ToUtf16(input, _chars.AsSpan(_length), out var read, out var written, replaceInvalidSequences: true,
            isFinalBlock: flush);
        _length += written;
        input[read..].CopyTo(_bytes);
        _pending = input.Length - read;
    }

    private void Release(bool final)
    {
        var held = _chars.AsSpan(FinalLength, _length - FinalLength);
        var stopAt = -1;
        foreach (var stop in _stops)
        {
            var at = held.IndexOf(stop.AsSpan(), StringComparison.Ordinal);
            if (at >= 0 && (stopAt < 0 || at < stopAt)) stopAt = at;
        }
        if (stopAt >= 0)
        {
            Stopped = true;
            _length = FinalLength += stopAt;
            return;
        }
        FinalLength = _length - (final ? 0 : LongestStopPrefixSuffix(held));
    }

    /// <summary>Length of the longest tail of <paramref name="text"/> that begins some stop string.</summary>
    private int LongestStopPrefixSuffix(ReadOnlySpan<char> text)
    {
        var best = 0;
        foreach (var stop in _stops)
            for (var len = Math.Min(stop.Length - 1, text.Length); len > best; len--)
                if (text[^len..].SequenceEqual(stop.AsSpan(0, len)))
                {
                    best = len;
                    break;
                }
        return best;
    }
}
