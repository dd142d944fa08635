namespace FeatureFlow.Models.Tokenization;

/// <summary>
/// A tokenizer.json Unigram model (SentencePiece unigram as Hugging Face runs it): the segmentation with the
/// highest total piece score (Viterbi), characters no piece covers scored as the unknown token
/// (lowest score − 10), runs of them fused, then spelled as <c>&lt;0xHH&gt;</c> pieces when byte fallback is on.
/// Microsoft.ML.Tokenizers has a unigram model only behind a SentencePiece protobuf, hence this class.
/// </summary>
internal sealed class HfUnigramModel : IHfModel
{
    private const double UnknownPenalty = 10.0;
    private readonly double[] _scores;
    private readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _lookup;
    private readonly int _longestPiece;
    private readonly double _unknownScore;
    private readonly int? _unknownId;
    private readonly int[]? _byteIds;
    private readonly string _file;

    private HfUnigramModel(string[] pieces, double[] scores, int? unknownId, bool byteFallback, string file)
    {
        _scores = scores;
        var lookup = new Dictionary<string, int>(pieces.Length, StringComparer.Ordinal);
        for (var i = 0; i < pieces.Length; i++) lookup.TryAdd(pieces[i], i);
        _lookup = lookup.GetAlternateLookup<ReadOnlySpan<char>>();
        _longestPiece = pieces.Max(p => p.Length);
        _unknownScore = scores.Min() - UnknownPenalty;
        _unknownId = unknownId;
        _byteIds = byteFallback ? IHfModel.ByteFallbackIds(p => lookup.TryGetValue(p, out var id) ? id : null) : null;
        _file = file;
        Pieces = Enumerable.Range(0, pieces.Length).ToDictionary(i => i, i => pieces[i]);
    }

    public IReadOnlyDictionary<int, string> Pieces { get; }

    public static HfUnigramModel Parse(HfJson model)
    {
        var entries = model.Required("vocab").Array().Select(entry =>
        {
            var pair = entry.Array().ToArray();
            if (pair.Length != 2) throw entry.Error($"{entry.Path} should be [piece, score], found {pair.Length} values");
            return (Piece: pair[0].String(), Score: pair[1].Double());
        }).ToArray();
        if (entries.Length == 0) throw model.Error($"{model.Path}.vocab is empty");
        var unknownId = model.Optional("unk_id")?.Int();
        if (unknownId is { } unk && (unk < 0 || unk >= entries.Length))
            throw model.Error($"{model.Path}.unk_id {unk} is outside the vocabulary (0..{entries.Length - 1})");
        return new HfUnigramModel(entries.Select(e => e.Piece).ToArray(), entries.Select(e => e.Score).ToArray(),
            unknownId, model.OptionalBool("byte_fallback", false), model.File);
    }

    public void Encode(string word, List<int> ids)
    {
        var n = word.Length;
        // best[end]: the best segmentation of word[..end]; Start -1 = not reached yet. Id -1 marks an unknown span.
        var best = new (double Score, int Start, int Id)[n + 1];
        for (var i = 1; i <= n; i++) best[i] = (double.NegativeInfinity, -1, -1);
        for (var start = 0; start < n; start += CharLength(word, start))
        {
            var charLength = CharLength(word, start);
            var coversCharacter = false;
            // Shorter pieces first: on equal scores the first candidate stays, as in Hugging Face's lattice.
            for (var length = 1; length <= Math.Min(_longestPiece, n - start); length++)
            {
                var end = start + length;
                if (end < n && char.IsLowSurrogate(word[end]) && char.IsHighSurrogate(word[end - 1])) continue;
                if (!_lookup.TryGetValue(word.AsSpan(start, length), out var id)) continue;
                Offer(best, end, best[start].Score + _scores[id], start, id);
                coversCharacter |= length == charLength;
            }
            if (!coversCharacter) Offer(best, start + charLength, best[start].Score + _unknownScore, start, -1);
        }

        var spans = new List<(int Start, int End, int Id)>();
        for (var end = n; end > 0; end = best[end].Start)
        {
            var (_, start, id) = best[end];
            // Adjacent unknown spans fuse into one.
            if (id < 0 && spans.Count > 0 && spans[^1].Id < 0) spans[^1] = (start, spans[^1].End, -1);
            else spans.Add((start, end, id));
        }
        spans.Reverse();
        foreach (var (start, end, id) in spans)
        {
            if (id >= 0) ids.Add(id);
            else AppendUnknown(word.AsSpan(start, end - start), ids);
        }
    }

    private static void Offer((double Score, int Start, int Id)[] best, int end, double score, int start, int id)
    {
        if (best[end].Start < 0 || score > best[end].Score) best[end] = (score, start, id);
    }

    private void AppendUnknown(ReadOnlySpan<char> text, List<int> ids)
    {
        if (_byteIds is not null && IHfModel.TryAppendBytes(_byteIds, text, ids)) return;
        ids.Add(_unknownId ?? throw new InvalidDataException(
            $"{_file}: '{text}' has no piece, no byte pieces and the model has no unk_id"));
    }

    private static int CharLength(string text, int at) => char.IsSurrogatePair(text, at) ? 2 : 1;
}
