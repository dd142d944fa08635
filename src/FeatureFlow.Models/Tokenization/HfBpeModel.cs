using Microsoft.ML.Tokenizers;

namespace FeatureFlow.Models.Tokenization;

/// <summary>
/// A tokenizer.json BPE model. Microsoft.ML.Tokenizers' <see cref="BpeTokenizer"/> (a port of Hugging Face's BPE)
/// does the rank-ordered merging; this class adds what it lacks: byte fallback (characters outside the vocabulary
/// become their <c>&lt;0xHH&gt;</c> pieces) and <c>ignore_merges</c> (a word in the vocabulary is one token).
/// </summary>
internal sealed class HfBpeModel : IHfModel
{
    private readonly BpeTokenizer _bpe;
    private readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _vocab;
    private readonly bool _ignoreMerges;
    private readonly int[]? _byteIds;
    private readonly int? _unknownId;
    private readonly bool _fuseUnknown;

    private HfBpeModel(BpeTokenizer bpe, Dictionary<string, int> vocab, bool ignoreMerges, int[]? byteIds,
        int? unknownId, bool fuseUnknown)
    {
        _bpe = bpe;
        _vocab = vocab.GetAlternateLookup<ReadOnlySpan<char>>();
        _ignoreMerges = ignoreMerges;
        _byteIds = byteIds;
        _unknownId = unknownId;
        _fuseUnknown = fuseUnknown;
        Pieces = vocab.ToDictionary(e => e.Value, e => e.Key);
    }

    public IReadOnlyDictionary<int, string> Pieces { get; }

    public static HfBpeModel Parse(HfJson model)
    {
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var (piece, id) in model.Required("vocab").Properties()) vocab[piece] = id.Int();
        var merges = model.Optional("merges")?.Array().Select(MergeLine).ToList() ?? [];
        if (model.Optional("dropout") is { } dropout && dropout.Double() != 0)
            throw model.Error(
                $"{dropout.Path} is {dropout.Element}: BPE dropout makes encoding random; only 0 or null is supported");
        var unknown = model.Optional("unk_token")?.String();
        int? unknownId = null;
        if (unknown is not null)
            unknownId = vocab.TryGetValue(unknown, out var id) ? id
                : throw model.Error($"{model.Path}.unk_token '{unknown}' is not in {model.Path}.vocab");
        var prefix = NullIfEmpty(model.Optional("continuing_subword_prefix")?.String());
        var suffix = NullIfEmpty(model.Optional("end_of_word_suffix")?.String());
        var byteFallback = model.OptionalBool("byte_fallback", false);
        int[]? byteIds = null;
        if (byteFallback)
        {
            if (prefix is not null || suffix is not null)
                throw model.Error(
                    $"{model.Path}: byte_fallback with continuing_subword_prefix or end_of_word_suffix is not supported");
            byteIds = IHfModel.ByteFallbackIds(piece => vocab.TryGetValue(piece, out var b) ? b : null);
        }
        var fuseUnknown = model.OptionalBool("fuse_unk", false);

        BpeTokenizer bpe;
        try
        {
            bpe = BpeTokenizer.Create(new BpeOptions(vocab)
            {
                Merges = merges,
                // With byte fallback this class decides what an unknown character becomes.
                UnknownToken = byteFallback ? null : unknown,
                FuseUnknownTokens = fuseUnknown,
                ContinuingSubwordPrefix = prefix,
                EndOfWordSuffix = suffix,
            });
        }
        catch (InvalidOperationException e)
        {
            throw model.Error($"{model.Path}.merges: {e.Message}");
        }
        return new HfBpeModel(bpe, vocab, model.OptionalBool("ignore_merges", false), byteIds,
            byteFallback ? unknownId : null, fuseUnknown);
    }

    public void Encode(string word, List<int> ids)
    {
        if (_ignoreMerges && _vocab.TryGetValue(word, out var whole))
        {
            ids.Add(whole);
            return;
        }
        if (_byteIds is null && _unknownId is null)
        {
            ids.AddRange(_bpe.EncodeToIds(word, considerPreTokenization: false, considerNormalization: false));
            return;
        }
        // Byte fallback: merges never cross a character outside the vocabulary, so the runs between such
        // characters are merged independently and each outside character becomes its bytes (or the unknown id).
        var runStart = 0;
        var previousWasUnknown = false;
        for (var i = 0; i < word.Length;)
        {
            var length = char.IsSurrogatePair(word, i) ? 2 : 1;
            if (!_vocab.ContainsKey(word.AsSpan(i, length)))
            {
                if (i > runStart)
                {
                    ids.AddRange(_bpe.EncodeToIds(word.AsSpan(runStart, i - runStart), false, false));
                    previousWasUnknown = false;
                }
                previousWasUnknown = AppendOutsideCharacter(word.AsSpan(i, length), ids, previousWasUnknown);
                runStart = i + length;
            }
            i += length;
        }
        if (runStart < word.Length) ids.AddRange(_bpe.EncodeToIds(word.AsSpan(runStart), false, false));
    }

    /// <returns>whether the character became the unknown id</returns>
    private bool AppendOutsideCharacter(ReadOnlySpan<char> character, List<int> ids, bool previousWasUnknown)
    {
        if (_byteIds is not null && IHfModel.TryAppendBytes(_byteIds, character, ids)) return false;
        // Hugging Face drops the character when there is no unknown token either.
        if (_unknownId is not { } unknown) return false;
        if (!(previousWasUnknown && _fuseUnknown)) ids.Add(unknown);
        return true;
    }

    private static string MergeLine(HfJson merge)
    {
        if (merge.Element.ValueKind == System.Text.Json.JsonValueKind.String)
        {
            var line = merge.String();
            var space = line.IndexOf(' ');
            if (space <= 0 || space == line.Length - 1 || line.IndexOf(' ', space + 1) >= 0)
                throw merge.Error($"{merge.Path} '{line}' should be two pieces separated by one space");
            return line;
        }
        var pair = merge.Array().Select(p => p.String()).ToArray();
        if (pair.Length != 2) throw merge.Error($"{merge.Path} should be a pair of pieces, found {pair.Length}");
        if (pair.Any(p => p.Length == 0 || p.Contains(' ', StringComparison.Ordinal)))
            throw merge.Error(
                $"{merge.Path} has an empty piece or one with a space, which Microsoft.ML.Tokenizers' merges cannot hold");
        return $"{pair[0]} {pair[1]}";
    }

    private static string? NullIfEmpty(string? s) => string.IsNullOrEmpty(s) ? null : s;
}
