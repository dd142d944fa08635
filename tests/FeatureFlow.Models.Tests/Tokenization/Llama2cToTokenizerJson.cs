using System.Text;
using System.Text.Json.Nodes;

namespace FeatureFlow.Models.Tests.Tokenization;

/// <summary>
/// Converts llama2.c's tok*.bin (a SentencePiece BPE vocabulary: pieces with scores, byte pieces &lt;0xHH&gt;)
/// into a Llama-2-style tokenizer.json the way Hugging Face's LlamaConverter does: every split of a piece into two
/// pieces is a merge, merges ordered by the merged piece's score (highest first), dummy-prefix normalizer,
/// byte-fallback model and the ByteFallback/Fuse/Strip decoder.
/// </summary>
internal static class Llama2cToTokenizerJson
{
    private const string Space = "\u2581";

    public static string Convert(string tokBinPath, int vocabSize)
    {
        var (pieces, scores) = Read(tokBinPath, vocabSize);
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        for (var i = 0; i < pieces.Length; i++) vocab.TryAdd(pieces[i], i);

        var merges = Enumerable.Range(0, pieces.Length)
            .SelectMany(id => SplitsInVocab(pieces[id], vocab)
                .OrderBy(split => vocab[split.Left]).ThenBy(split => vocab[split.Right])
                .Select(split => (split.Left, split.Right, Score: scores[id])))
            .OrderByDescending(m => m.Score) // stable, as Python's sorted
            .Select(m => (JsonNode)$"{m.Left} {m.Right}")
            .ToArray();

        var vocabJson = new JsonObject();
        foreach (var (piece, id) in vocab) vocabJson[piece] = id;
        var json = new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = new JsonArray(Enumerable.Range(0, 3).Select(id => (JsonNode)new JsonObject
            {
                ["id"] = id, ["content"] = pieces[id], ["single_word"] = false, ["lstrip"] = false,
                ["rstrip"] = false, ["normalized"] = false, ["special"] = true,
            }).ToArray()),
            ["normalizer"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["normalizers"] = new JsonArray(
                    new JsonObject { ["type"] = "Prepend", ["prepend"] = Space },
                    Replace(" ", Space)),
            },
            ["pre_tokenizer"] = null,
            ["decoder"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["decoders"] = new JsonArray(
                    Replace(Space, " "),
                    new JsonObject { ["type"] = "ByteFallback" },
                    new JsonObject { ["type"] = "Fuse" },
                    new JsonObject { ["type"] = "Strip", ["content"] = " ", ["start"] = 1, ["stop"] = 0 }),
            },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE", ["dropout"] = null, ["unk_token"] = "<unk>", ["fuse_unk"] = true,
                ["byte_fallback"] = true, ["vocab"] = vocabJson, ["merges"] = new JsonArray(merges),
            },
        };
        return json.ToJsonString();
    }

    public static JsonObject Replace(string pattern, string content) => new()
    {
        ["type"] = "Replace", ["pattern"] = new JsonObject { ["String"] = pattern }, ["content"] = content,
    };

    private static IEnumerable<(string Left, string Right)> SplitsInVocab(string piece, Dictionary<string, int> vocab)
    {
        for (var i = 1; i < piece.Length; i++)
            if (vocab.ContainsKey(piece[..i]) && vocab.ContainsKey(piece[i..])) yield return (piece[..i], piece[i..]);
    }

    private static (string[] Pieces, float[] Scores) Read(string path, int vocabSize)
    {
        using var reader = new BinaryReader(File.OpenRead(path));
        reader.ReadInt32();
        var pieces = new string[vocabSize];
        var scores = new float[vocabSize];
        for (var i = 0; i < vocabSize; i++)
        {
            scores[i] = reader.ReadSingle();
            var text = Encoding.UTF8.GetString(reader.ReadBytes(reader.ReadInt32()));
            // llama2.c's export wrote SentencePiece's ▁ as a space and its control pieces as "\n<s>\n".
            pieces[i] = i switch
            {
                0 => "<unk>", 1 => "<s>", 2 => "</s>", _ => text.Replace(" ", Space, StringComparison.Ordinal),
            };
        }
        return (pieces, scores);
    }
}
