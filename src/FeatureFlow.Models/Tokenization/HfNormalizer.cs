using System.Text;

namespace FeatureFlow.Models.Tokenization;

/// <summary>A tokenizer.json <c>normalizer</c>: the text rewrites applied before pre-tokenization.</summary>
internal sealed class HfNormalizer
{
    private const string Supported = "Sequence, Prepend, Replace, NFC, NFD, NFKC, NFKD, Lowercase, Strip";
    private readonly Func<string, string>[] _steps;

    private HfNormalizer(Func<string, string>[] steps) => _steps = steps;

    public static HfNormalizer Identity { get; } = new([]);

    public string Normalize(string text)
    {
        foreach (var step in _steps) text = step(text);
        return text;
    }

    public static HfNormalizer Parse(HfJson? json)
    {
        var steps = new List<Func<string, string>>();
        if (json is { } normalizer) Add(normalizer, steps);
        return new HfNormalizer(steps.ToArray());
    }

    private static void Add(HfJson json, List<Func<string, string>> steps)
    {
        switch (json.Type)
        {
            case "Sequence":
                foreach (var inner in json.Required("normalizers").Array()) Add(inner, steps);
                break;
            case "Prepend":
                var prefix = json.Required("prepend").String();
                // Hugging Face prepends only to non-empty text.
                steps.Add(text => text.Length == 0 ? text : prefix + text);
                break;
            case "Replace":
                var pattern = json.Required("pattern").Pattern();
                var content = json.Required("content").String();
                steps.Add(text => pattern.Replace(text, content.Replace("$", "$$", StringComparison.Ordinal)));
                break;
            case "NFC": steps.Add(text => text.Normalize(NormalizationForm.FormC)); break;
            case "NFD": steps.Add(text => text.Normalize(NormalizationForm.FormD)); break;
            case "NFKC": steps.Add(text => text.Normalize(NormalizationForm.FormKC)); break;
            case "NFKD": steps.Add(text => text.Normalize(NormalizationForm.FormKD)); break;
            case "Lowercase": steps.Add(text => text.ToLowerInvariant()); break;
            case "Strip":
                var left = json.OptionalBool("strip_left", true);
                var right = json.OptionalBool("strip_right", true);
                steps.Add(text => (left, right) switch
                {
                    (true, true) => text.Trim(),
                    (true, false) => text.TrimStart(),
                    (false, true) => text.TrimEnd(),
                    _ => text,
                });
                break;
            case var other: throw json.Unsupported(other, Supported);
        }
    }
}
