using System.Text;
using System.Text.Json;
using FeatureFlow.Models.Tokenization;

namespace FeatureFlow.Models.Tests.Tokenization;

internal static class HfTokenizerTestSupport
{
    public const int Gpt2EndOfText = 50256;

    public static string TokenizerJson(string fixtureFolder) => Path.Combine(fixtureFolder, "tokenizer.json");

    public static string FixturesDirectory =>
        Path.Combine(RepoPaths.Root, "tests", "FeatureFlow.Models.Tests", "Tokenization", "Fixtures");

    /// <summary>The text the tokenizer gives back for <paramref name="ids"/>, decoded piece by piece after BOS.</summary>
    public static string Decode(ITokenizer tokenizer, IEnumerable<int> ids)
    {
        var bytes = new List<byte>();
        var previous = tokenizer.BosId;
        foreach (var id in ids)
        {
            bytes.AddRange(tokenizer.DecodePiece(previous, id).ToArray());
            previous = id;
        }
        return Encoding.UTF8.GetString(bytes.ToArray());
    }

    /// <summary>Writes <paramref name="json"/> to a temporary tokenizer.json and loads it.</summary>
    public static HfTokenizer LoadFromText(string json, int bosId, int eosId)
    {
        var path = Path.Combine(Directory.CreateTempSubdirectory("featureflow-hf-tokenizer-").FullName, "tokenizer.json");
        try
        {
            File.WriteAllText(path, json);
            return HfTokenizer.Load(path, bosId, eosId);
        }
        finally
        {
            Directory.Delete(Path.GetDirectoryName(path)!, recursive: true);
        }
    }

    /// <summary>(prompt text, prompt ids) of torch-tiny-gpt2's REFERENCE_greedy_next_token.json.</summary>
    public static IEnumerable<(string Text, int[] Ids)> GreedyReferencePrompts()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(
            Path.Combine(RepoPaths.TorchTinyGpt2, "REFERENCE_greedy_next_token.json")));
        foreach (var sample in doc.RootElement.GetProperty("samples").EnumerateArray())
            yield return (sample.GetProperty("prompt_text").GetString()!,
                sample.GetProperty("prompt_token_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray());
    }

    /// <summary>(text, ids) from Hugging Face's tokenizers library for a GPT-2 fixture (Fixtures/hf_reference.json).</summary>
    public static IEnumerable<(string Text, int[] Ids)> HfLibraryReference(string fixtureName)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(FixturesDirectory, "hf_reference.json")));
        var cases = doc.RootElement.GetProperty("tokenizers").GetProperty(fixtureName).GetProperty("cases");
        foreach (var c in cases.EnumerateArray())
            yield return (c.GetProperty("text").GetString()!,
                c.GetProperty("ids").EnumerateArray().Select(e => e.GetInt32()).ToArray());
    }
}
