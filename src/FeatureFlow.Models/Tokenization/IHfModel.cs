namespace FeatureFlow.Models.Tokenization;

/// <summary>The <c>model</c> section of a tokenizer.json: pre-tokenized words to ids, and the vocabulary back.</summary>
internal interface IHfModel
{
    /// <summary>Appends the ids of one pre-tokenized word.</summary>
    void Encode(string word, List<int> ids);

    /// <summary>Every vocabulary entry, id → piece as the file spells it.</summary>
    IReadOnlyDictionary<int, string> Pieces { get; }

    public static IHfModel Parse(HfJson model) => model.Type switch
    {
        "BPE" => HfBpeModel.Parse(model),
        "Unigram" => HfUnigramModel.Parse(model),
        var other => throw model.Unsupported(other, "BPE, Unigram"),
    };

    /// <summary>The ids of the <c>&lt;0xHH&gt;</c> byte pieces by byte value, -1 where the vocabulary lacks one.</summary>
    public static int[] ByteFallbackIds(Func<string, int?> idOf) =>
        Enumerable.Range(0, 256).Select(b => idOf($"<0x{b:X2}>") ?? -1).ToArray();

    /// <summary>Appends a character's byte pieces; false (appending nothing) when one of them is missing.</summary>
    public static bool TryAppendBytes(int[] byteIds, ReadOnlySpan<char> text, List<int> ids)
    {
        var bytes = System.Text.Encoding.UTF8.GetBytes(text.ToArray());
        if (bytes.Any(b => byteIds[b] < 0)) return false;
        foreach (var b in bytes) ids.Add(byteIds[b]);
        return true;
    }
}
