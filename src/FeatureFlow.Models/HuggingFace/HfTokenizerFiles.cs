namespace FeatureFlow.Models.HuggingFace;

/// <summary>The tokenizer files of a Hugging Face checkpoint that a model folder carries over.</summary>
public static class HfTokenizerFiles
{
    /// <summary>The fast-tokenizer file the folder's "hf" tokenizer entry names; required.</summary>
    public const string Main = "tokenizer.json";

    /// <summary>Copied when present: special tokens, templates and the slow tokenizers' own files.</summary>
    public static readonly IReadOnlyList<string> Companions =
    [
        "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
        "tokenizer.model", "vocab.json", "merges.txt",
    ];

    /// <summary>The files to copy, <see cref="Main"/> first; refuses a checkpoint without it, naming what it has.
    /// </summary>
    public static IReadOnlyList<string> Find(string checkpointDirectory)
    {
        if (!File.Exists(Path.Combine(checkpointDirectory, Main)))
        {
            var present = Companions.Where(f => File.Exists(Path.Combine(checkpointDirectory, f))).ToArray();
            throw new FileNotFoundException($"{checkpointDirectory}: expected {Main} (the tokenizer a model folder "
                + $"carries), found {(present.Length == 0 ? "no tokenizer files" : string.Join(", ", present))}",
                Path.Combine(checkpointDirectory, Main));
        }
        return [Main, .. Companions.Where(f => File.Exists(Path.Combine(checkpointDirectory, f)))];
    }
}
