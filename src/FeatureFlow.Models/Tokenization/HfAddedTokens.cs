namespace FeatureFlow.Models.Tokenization;

/// <summary>
/// A tokenizer.json's <c>added_tokens</c>: strings that become their id wherever they occur, before the text
/// is normalized or pre-tokenized. As in Hugging Face, tokens marked <c>normalized: false</c> are found in the
/// raw text and the others in the normalized text (their own content normalized too); at each position the
/// longest token wins, and <c>lstrip</c>/<c>rstrip</c> tokens swallow the whitespace beside them.
/// </summary>
internal sealed class HfAddedTokens
{
    private readonly Matcher _raw;
    private readonly Matcher _normalized;

    private HfAddedTokens(IReadOnlyList<HfAddedToken> tokens, HfNormalizer normalizer)
    {
        Tokens = tokens;
        _raw = new Matcher(tokens.Where(t => !t.Normalized));
        _normalized = new Matcher(tokens.Where(t => t.Normalized)
            .Select(t => t with { Content = normalizer.Normalize(t.Content) }));
    }

    public IReadOnlyList<HfAddedToken> Tokens { get; }

    public static HfAddedTokens Parse(HfJson? json, HfNormalizer normalizer)
    {
        var tokens = json?.Array().Select(t => new HfAddedToken(
            t.Required("id").Int(), t.Required("content").String(), t.OptionalBool("special", false),
            t.OptionalBool("normalized", true), t.OptionalBool("lstrip", false), t.OptionalBool("rstrip", false),
            t.OptionalBool("single_word", false))).ToArray() ?? [];
        if (tokens.FirstOrDefault(t => t.Content.Length == 0) is { } empty)
            throw json!.Value.Error($"added_tokens: token {empty.Id} has empty content");
        return new HfAddedTokens(tokens, normalizer);
    }

    /// <summary>Splits raw text at the tokens matched before normalization.</summary>
    public IEnumerable<Segment> SplitRaw(string text) => _raw.Split(text);

    /// <summary>Splits normalized text at the tokens matched after normalization.</summary>
    public IEnumerable<Segment> SplitNormalized(string text) => _normalized.Split(text);

    /// <summary>Either an added token (<see cref="Id"/> set) or text between tokens.</summary>
    public readonly record struct Segment(string Text, int? Id, bool StartsText);

    private sealed class Matcher
    {
        // Candidates by first character, longest first.
        private readonly Dictionary<char, HfAddedToken[]> _byFirstChar;

        public Matcher(IEnumerable<HfAddedToken> tokens) =>
            _byFirstChar = tokens.GroupBy(t => t.Content[0])
                .ToDictionary(g => g.Key, g => g.OrderByDescending(t => t.Content.Length).ToArray());

        public IEnumerable<Segment> Split(string text)
        {
            if (_byFirstChar.Count == 0)
            {
                yield return new Segment(text, null, true);
                yield break;
            }
            var textStart = 0;
            for (var i = 0; i < text.Length; i++)
            {
                if (!_byFirstChar.TryGetValue(text[i], out var candidates)) continue;
                var token = candidates.FirstOrDefault(t => Matches(text, i, t));
                if (token is null) continue;
                var (start, end) = (i, i + token.Content.Length);
                if (token.LeftStrip) while (start > textStart && char.IsWhiteSpace(text[start - 1])) start--;
                if (token.RightStrip) while (end < text.Length && char.IsWhiteSpace(text[end])) end++;
                if (start > textStart) yield return new Segment(text[textStart..start], null, textStart == 0);
                yield return new Segment(text[start..end], token.Id, start == 0);
                textStart = end;
                i = end - 1;
            }
            if (textStart < text.Length) yield return new Segment(text[textStart..], null, textStart == 0);
        }

        private static bool Matches(string text, int at, HfAddedToken token)
        {
            if (at + token.Content.Length > text.Length
                || string.CompareOrdinal(text, at, token.Content, 0, token.Content.Length) != 0) return false;
            if (!token.SingleWord) return true;
            var end = at + token.Content.Length;
            return (at == 0 || !IsWordChar(text[at - 1])) && (end == text.Length || !IsWordChar(text[end]));
        }

        private static bool IsWordChar(char c) => char.IsLetterOrDigit(c) || c == '_';
    }
}

/// <summary>One entry of a tokenizer.json's <c>added_tokens</c>.</summary>
internal sealed record HfAddedToken(int Id, string Content, bool Special, bool Normalized, bool LeftStrip,
    bool RightStrip, bool SingleWord);
