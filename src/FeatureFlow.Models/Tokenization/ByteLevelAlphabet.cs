using System.Text;

namespace FeatureFlow.Models.Tokenization;

/// <summary>
/// GPT-2's <c>bytes_to_unicode</c>: every byte as a printable character, so byte-level vocabularies are strings.
/// Printable Latin-1 bytes stand for themselves; the other 68 take the characters from U+0100 on, in byte order.
/// </summary>
internal static class ByteLevelAlphabet
{
    private static readonly char[] ByteToChar = BuildTable();
    private static readonly Dictionary<char, byte> CharToByte =
        Enumerable.Range(0, 256).ToDictionary(b => ByteToChar[b], b => (byte)b);

    /// <summary>The UTF-8 bytes of <paramref name="text"/>, one alphabet character each.</summary>
    public static string Map(string text)
    {
        var bytes = Encoding.UTF8.GetBytes(text);
        return string.Create(bytes.Length, bytes, static (chars, source) =>
        {
            for (var i = 0; i < source.Length; i++) chars[i] = ByteToChar[source[i]];
        });
    }

    /// <summary>The bytes a vocabulary string stands for; null when it has a character outside the alphabet.</summary>
    public static byte[]? Unmap(string piece)
    {
        var bytes = new byte[piece.Length];
        for (var i = 0; i < piece.Length; i++)
        {
            if (!CharToByte.TryGetValue(piece[i], out var b)) return null;
            bytes[i] = b;
        }
        return bytes;
    }

    private static char[] BuildTable()
    {
        var table = new char[256];
        var next = 256;
        for (var b = 0; b < 256; b++)
        {
            var printable = b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF;
            table[b] = printable ? (char)b : (char)next++;
        }
        return table;
    }
}
