using FeatureFlow.Models.Tokenization;

namespace FeatureFlow.Models.Tests.Tokenization;

public class HfTokenizerErrorTests
{
    private const string ByteLevelModel =
        """{"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}""";

    [Fact]
    public void Unknown_model_type_names_the_file_and_the_field()
    {
        var (path, e) = LoadFails("""{"model": {"type": "WordPiece", "vocab": {}}}""");
        Assert.Contains(path, e.Message);
        Assert.Contains("model.type 'WordPiece' is not supported", e.Message);
    }

    [Fact]
    public void Malformed_json_names_the_file_and_the_line()
    {
        var (path, e) = LoadFails("{\n\"model\": {\"type\": \"BPE\",,}\n}");
        Assert.Contains(path, e.Message);
        Assert.Contains("not valid JSON (line 2)", e.Message);
    }

    [Fact]
    public void Missing_vocabulary_names_the_field()
    {
        var (path, e) = LoadFails("""{"model": {"type": "BPE", "merges": []}}""");
        Assert.Contains($"{path}: model.vocab is missing", e.Message);
    }

    [Fact]
    public void Wrongly_typed_field_says_what_was_expected_and_found()
    {
        var (_, e) = LoadFails("""{"model": {"type": "Unigram", "vocab": [["a", "high"]]}}""");
        Assert.Contains("model.vocab[0][1] should be a number, found a string", e.Message);
    }

    [Fact]
    public void Merge_of_pieces_outside_the_vocabulary_names_the_merges()
    {
        var (_, e) = LoadFails("""{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a z"]}}""");
        Assert.Contains("model.merges", e.Message);
        Assert.Contains("'z'", e.Message);
    }

    [Fact]
    public void Unsupported_pre_tokenizer_names_its_path()
    {
        var (_, e) = LoadFails($$"""
            {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "BertPreTokenizer"}]},
             "model": {{ByteLevelModel}}}
            """);
        Assert.Contains("pre_tokenizer.pretokenizers[0].type 'BertPreTokenizer' is not supported", e.Message);
    }

    [Fact]
    public void Bos_outside_the_vocabulary_is_refused()
    {
        var (_, e) = LoadFails($$"""{"model": {{ByteLevelModel}}}""", bosId: 7);
        Assert.Contains("BOS id 7 is outside the vocabulary (0..2)", e.Message);
    }

    [Fact]
    public void Missing_file_is_a_file_not_found_error() =>
        Assert.Throws<FileNotFoundException>(() => HfTokenizer.Load("/nonexistent/tokenizer.json", 0, 0));

    private static (string Path, InvalidDataException Error) LoadFails(string json, int bosId = 0)
    {
        var dir = Directory.CreateTempSubdirectory("featureflow-hf-tokenizer-").FullName;
        var path = Path.Combine(dir, "tokenizer.json");
        try
        {
            File.WriteAllText(path, json);
            return (path, Assert.Throws<InvalidDataException>(() => HfTokenizer.Load(path, bosId, 0)));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
