using System.Text.RegularExpressions;

namespace FeatureFlow.Models.Tokenization;

/// <summary>
/// A tokenizer.json <c>pre_tokenizer</c>: splits normalized text into the words the model encodes one by one.
/// A <c>ByteLevel</c> step only splits and adds its prefix space here; its byte-to-character mapping is
/// <see cref="ByteLevelAlphabet"/>'s job, flagged by <see cref="IsByteLevel"/>.
/// </summary>
internal sealed partial class HfPreTokenizer
{
    private const string Supported = "Sequence, ByteLevel, Split, Metaspace, Digits";

    private delegate List<string> Step(List<string> words, bool startsText);

    private readonly Step[] _steps;

    private HfPreTokenizer(Step[] steps, bool isByteLevel)
    {
        _steps = steps;
        IsByteLevel = isByteLevel;
    }

    /// <summary>Whether words go through the byte-level alphabet before the model sees them.</summary>
    public bool IsByteLevel { get; }

    /// <param name="startsText">whether <paramref name="text"/> begins the input (not after an added token)</param>
    public List<string> Split(string text, bool startsText)
    {
        var words = new List<string> { text };
        foreach (var step in _steps) words = step(words, startsText);
        words.RemoveAll(w => w.Length == 0);
        return words;
    }

    public static HfPreTokenizer Parse(HfJson? json)
    {
        var steps = new List<Step>();
        var byteLevel = false;
        if (json is { } preTokenizer) Add(preTokenizer, steps, ref byteLevel);
        return new HfPreTokenizer(steps.ToArray(), byteLevel);
    }

    private static void Add(HfJson json, List<Step> steps, ref bool byteLevel)
    {
        switch (json.Type)
        {
            case "Sequence":
                foreach (var inner in json.Required("pretokenizers").Array()) Add(inner, steps, ref byteLevel);
                break;
            case "ByteLevel":
                byteLevel = true;
                var addPrefixSpace = json.OptionalBool("add_prefix_space", true);
                var useRegex = json.OptionalBool("use_regex", true);
                steps.Add((words, _) => words.SelectMany(word =>
                {
                    if (addPrefixSpace && !word.StartsWith(' ')) word = " " + word;
                    return useRegex ? SplitBy(word, Gpt2Words(), SplitBehavior.Isolated, invert: false) : [word];
                }).ToList());
                break;
            case "Split":
                var pattern = json.Required("pattern").Pattern();
                var behavior = ParseBehavior(json.Required("behavior"));
                var invert = json.OptionalBool("invert", false);
                steps.Add((words, _) => words.SelectMany(w => SplitBy(w, pattern, behavior, invert)).ToList());
                break;
            case "Metaspace":
                steps.Add(Metaspace(json));
                break;
            case "Digits":
                var digits = json.OptionalBool("individual_digits", false) ? SingleDigit() : DigitRun();
                steps.Add((words, _) => words.SelectMany(w => SplitBy(w, digits, SplitBehavior.Isolated, false)).ToList());
                break;
            case var other: throw json.Unsupported(other, Supported);
        }
    }

    private static Step Metaspace(HfJson json)
    {
        var replacement = json.Required("replacement").String();
        // Older files say add_prefix_space; newer ones say prepend_scheme.
        var scheme = json.Optional("prepend_scheme")?.String()
                     ?? (json.OptionalBool("add_prefix_space", true) ? "always" : "never");
        if (scheme is not ("always" or "first" or "never"))
            throw json.Error($"{json.Path}.prepend_scheme '{scheme}' is not always, first or never");
        var split = json.OptionalBool("split", true);
        var separator = new Regex(Regex.Escape(replacement), RegexOptions.CultureInvariant);
        return (words, startsText) => words.Select((word, i) =>
        {
            word = word.Replace(" ", replacement, StringComparison.Ordinal);
            var prepend = scheme == "always" || (scheme == "first" && startsText && i == 0);
            return prepend && !word.StartsWith(replacement, StringComparison.Ordinal) ? replacement + word : word;
        }).SelectMany(w => split ? SplitBy(w, separator, SplitBehavior.MergedWithNext, false) : [w]).ToList();
    }

    private enum SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous }

    private static SplitBehavior ParseBehavior(HfJson json) => json.String() switch
    {
        "Removed" => SplitBehavior.Removed,
        "Isolated" => SplitBehavior.Isolated,
        "MergedWithPrevious" => SplitBehavior.MergedWithPrevious,
        "MergedWithNext" => SplitBehavior.MergedWithNext,
        "Contiguous" => SplitBehavior.Contiguous,
        var other => throw json.Error(
            $"{json.Path} '{other}' is not Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous"),
    };

    /// <summary>Hugging Face's <c>SplitDelimiterBehavior</c> over the pattern's matches.</summary>
    private static List<string> SplitBy(string text, Regex pattern, SplitBehavior behavior, bool invert)
    {
        var pieces = new List<(string Text, bool IsDelimiter)>();
        var at = 0;
        foreach (Match m in pattern.Matches(text))
        {
            if (m.Length == 0) continue;
            if (m.Index > at) pieces.Add((text[at..m.Index], invert));
            pieces.Add((m.Value, !invert));
            at = m.Index + m.Length;
        }
        if (at < text.Length) pieces.Add((text[at..], invert));

        var words = new List<string>();
        var pendingPrefix = "";
        var previousWasDelimiter = false;
        foreach (var (piece, isDelimiter) in pieces)
        {
            var appendToLast = words.Count > 0 && isDelimiter && behavior switch
            {
                SplitBehavior.MergedWithPrevious => true,
                SplitBehavior.Contiguous => previousWasDelimiter,
                _ => false,
            };
            previousWasDelimiter = isDelimiter;
            if (isDelimiter && behavior == SplitBehavior.Removed) continue;
            if (isDelimiter && behavior == SplitBehavior.MergedWithNext) pendingPrefix += piece;
            else if (appendToLast) words[^1] += piece;
            else
            {
                words.Add(pendingPrefix + piece);
                pendingPrefix = "";
            }
        }
        if (pendingPrefix.Length > 0) words.Add(pendingPrefix);
        return words;
    }

    // GPT-2's word pattern, as the ByteLevel pre-tokenizer uses it.
    [GeneratedRegex(@"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
        RegexOptions.CultureInvariant)]
    private static partial Regex Gpt2Words();

    [GeneratedRegex(@"\p{N}", RegexOptions.CultureInvariant)]
    private static partial Regex SingleDigit();

    [GeneratedRegex(@"\p{N}+", RegexOptions.CultureInvariant)]
    private static partial Regex DigitRun();
}
