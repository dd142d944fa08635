using System.Text;

namespace FeatureFlow.Models.Tokenization;

/// <summary>
/// llama2.c's tokenizer (tok*.bin): score-greedy BPE over UTF-8 code points with byte fallback,
/// encoding and decoding exactly as run.c's encode() and decode() do.
/// </summary>
public sealed class Llama2cTokenizer : ITokenizer
{
    private const int ByteFallbackOffset = 3;
    private readonly byte[][] _pieces;
    private readonly float[] _scores;
    private readonly byte[][] _decoded;
    // Latin-1 maps bytes 1:1 onto chars, so a string key is an exact byte-sequence key.
    private readonly Dictionary<string, int> _lookup;

    private Llama2cTokenizer(byte[][] pieces, float[] scores)
    {
        _pieces = pieces;
        _scores = scores;
        _lookup = new Dictionary<string, int>(pieces.Length, StringComparer.Ordinal);
        for (var i = 0; i < pieces.Length; i++) _lookup.TryAdd(Encoding.Latin1.GetString(pieces[i]), i);
        _decoded = pieces.Select(DecodeRaw).ToArray();
    }

    public int VocabSize => _pieces.Length;
    public int BosId => 1;
    public int EosId => 2;

    public static Llama2cTokenizer Load(string path, int vocabSize)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"tokenizer not found: {path}", path);
        using var reader = new BinaryReader(File.OpenRead(path));
        try
        {
            reader.ReadInt32(); // max_token_length: only run.c's buffer sizing needs it
            var pieces = new byte[vocabSize][];
            var scores = new float[vocabSize];
            for (var i = 0; i < vocabSize; i++)
            {
                scores[i] = reader.ReadSingle();
                var len = reader.ReadInt32();
                if (len < 0 || len > 1024) throw new InvalidDataException($"{path}: token {i} has length {len}");
                pieces[i] = reader.ReadBytes(len);
                if (pieces[i].Length != len) throw new EndOfStreamException();
            }
            return new Llama2cTokenizer(pieces, scores);
        }
        catch (EndOfStreamException)
        {
            throw new InvalidDataException($"{path}: truncated tokenizer file (expected {vocabSize} tokens)");
        }
    }

    public string Piece(int id) => Encoding.UTF8.GetString(_pieces[id]);

    /// <summary>The piece as tok*.bin stores its bytes (byte-fallback pieces spelled "&lt;0xHH&gt;").</summary>
    public ReadOnlySpan<byte> RawPiece(int id) => _pieces[id];

    /// <summary>The merge score run.c's encode() ranks this piece by.</summary>
    public float Score(int id) => _scores[id];

    public int[] Encode(string text, bool addBos)
    {
        var tokens = new List<int>(text.Length + 2);
        if (addBos) tokens.Add(BosId);
        var bytes = Encoding.UTF8.GetBytes(text);
        if (bytes.Length > 0) tokens.Add(_lookup[" "]);

        // One code point at a time (a lead byte plus up to three continuation bytes), as run.c groups them.
        for (var i = 0; i < bytes.Length;)
        {
            var len = 1;
            while (i + len < bytes.Length && (bytes[i + len] & 0xC0) == 0x80 && len < 4) len++;
            if (_lookup.TryGetValue(Encoding.Latin1.GetString(bytes, i, len), out var id)) tokens.Add(id);
            else for (var j = 0; j < len; j++) tokens.Add(bytes[i + j] + ByteFallbackOffset);
            i += len;
        }

        while (true)
        {
            var bestScore = float.NegativeInfinity;
            int bestId = -1, bestIndex = -1;
            for (var i = 0; i < tokens.Count - 1; i++)
            {
                var merged = Encoding.Latin1.GetString(_pieces[tokens[i]]) + Encoding.Latin1.GetString(_pieces[tokens[i + 1]]);
                if (_lookup.TryGetValue(merged, out var id) && _scores[id] > bestScore)
                {
                    bestScore = _scores[id];
                    bestId = id;
                    bestIndex = i;
                }
            }
            if (bestIndex < 0) break;
            tokens[bestIndex] = bestId;
            tokens.RemoveAt(bestIndex + 1);
        }
        return tokens.ToArray();
    }

    public ReadOnlySpan<byte> DecodePiece(int previous, int token)
    {
        var piece = _decoded[token];
        // run.c strips the dummy-prefix space of the first piece after BOS.
        return previous == BosId && piece.Length > 0 && piece[0] == (byte)' ' ? piece.AsSpan(1) : piece;
    }

    /// <summary>Whether the token is a byte-fallback token (one raw byte, spelled "&lt;0xHH&gt;").</summary>
    public bool IsByteFallback(int id) => TryParseByteFallback(_pieces[id], out _);

    private static byte[] DecodeRaw(byte[] piece) => TryParseByteFallback(piece, out var b) ? [b] : piece;

    private static bool TryParseByteFallback(byte[] piece, out byte value)
    {
        value = 0;
        return piece.Length == 6 && piece[0] == '<' && piece[1] == '0' && piece[2] == 'x' && piece[5] == '>'
            && byte.TryParse(Encoding.ASCII.GetString(piece, 3, 2), System.Globalization.NumberStyles.HexNumber,
                null, out value);
    }
}
