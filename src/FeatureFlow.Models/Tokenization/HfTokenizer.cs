namespace FeatureFlow.Models.Tokenization;

/// <summary>
/// A Hugging Face <c>tokenizer.json</c> (byte-level BPE as GPT-2 and Llama 3, SentencePiece-style BPE with byte
/// fallback as Llama 2, Unigram as SentencePiece): added tokens, normalizer, pre-tokenizer and model on the way
/// in, the decoder piece by piece on the way out. BOS and EOS come from the model folder, not from this file.
/// </summary>
public sealed class HfTokenizer : ITokenizer
{
    private readonly HfAddedTokens _added;
    private readonly HfNormalizer _normalizer;
    private readonly HfPreTokenizer _preTokenizer;
    private readonly IHfModel _model;
    private readonly byte[][] _pieces;
    private readonly int _stripFromFirst;

    private HfTokenizer(HfAddedTokens added, HfNormalizer normalizer, HfPreTokenizer preTokenizer, IHfModel model,
        HfDecoder decoder, int bosId, int eosId)
    {
        _added = added;
        _normalizer = normalizer;
        _preTokenizer = preTokenizer;
        _model = model;
        VocabSize = Math.Max(model.Pieces.Keys.Max(), added.Tokens.Select(t => t.Id).DefaultIfEmpty(-1).Max()) + 1;
        _pieces = new byte[VocabSize][];
        for (var id = 0; id < VocabSize; id++) _pieces[id] = [];
        foreach (var (id, piece) in model.Pieces) _pieces[id] = decoder.Decode(piece);
        // Special tokens control generation and are no text; other added tokens are their content verbatim.
        foreach (var token in added.Tokens)
            _pieces[token.Id] = token.Special ? [] : System.Text.Encoding.UTF8.GetBytes(token.Content);
        _stripFromFirst = decoder.LeadingSpacesStripped;
        BosId = bosId;
        EosId = eosId;
    }

    public int VocabSize { get; }
    public int BosId { get; }
    public int EosId { get; }

    public static HfTokenizer Load(string path, int bosId, int eosId)
    {
        using var document = HfJson.Parse(path);
        var root = HfJson.Root(path, document);
        var normalizer = HfNormalizer.Parse(root.Optional("normalizer"));
        var tokenizer = new HfTokenizer(
            HfAddedTokens.Parse(root.Optional("added_tokens"), normalizer),
            normalizer,
            HfPreTokenizer.Parse(root.Optional("pre_tokenizer")),
            IHfModel.Parse(root.Required("model")),
            HfDecoder.Parse(root.Optional("decoder")),
            bosId, eosId);
        foreach (var (name, id) in new[] { ("BOS", bosId), ("EOS", eosId) })
            if (id < 0 || id >= tokenizer.VocabSize)
                throw new InvalidDataException(
                    $"{path}: {name} id {id} is outside the vocabulary (0..{tokenizer.VocabSize - 1})");
        return tokenizer;
    }

    public int[] Encode(string text, bool addBos)
    {
        var ids = new List<int>(text.Length / 3 + 2);
        if (addBos) ids.Add(BosId);
        foreach (var raw in _added.SplitRaw(text))
        {
            if (raw.Id is { } rawId)
            {
                ids.Add(rawId);
                continue;
            }
            foreach (var segment in _added.SplitNormalized(_normalizer.Normalize(raw.Text)))
            {
                if (segment.Id is { } id) ids.Add(id);
                else
                    foreach (var word in _preTokenizer.Split(segment.Text, raw.StartsText && segment.StartsText))
                        _model.Encode(_preTokenizer.IsByteLevel ? ByteLevelAlphabet.Map(word) : word, ids);
            }
        }
        return ids.ToArray();
    }

    public ReadOnlySpan<byte> DecodePiece(int previous, int token)
    {
        ReadOnlySpan<byte> piece = _pieces[token];
        if (previous != BosId) return piece;
        // The first piece of a text loses the space its encoding added in front (SentencePiece's dummy prefix).
        var strip = 0;
        while (strip < _stripFromFirst && strip < piece.Length && piece[strip] == (byte)' ') strip++;
        return piece[strip..];
    }
}
