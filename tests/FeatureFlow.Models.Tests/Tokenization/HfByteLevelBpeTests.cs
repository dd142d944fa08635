using System.Text.Json.Nodes;
using FeatureFlow.Models.Tokenization;
using static FeatureFlow.Models.Tests.Tokenization.HfTokenizerTestSupport;

namespace FeatureFlow.Models.Tests.Tokenization;

/// <summary>GPT-2's byte-level BPE tokenizer.json, from both third-party GPT-2 fixture folders.</summary>
public class HfByteLevelBpeTests
{
    private static readonly Lazy<HfTokenizer> Torch =
        new(() => HfTokenizer.Load(TokenizerJson(RepoPaths.TorchTinyGpt2), Gpt2EndOfText, Gpt2EndOfText));
    // CodeGen's variant of the GPT-2 vocabulary: the same merges plus added tokens for runs of spaces and tabs.
    private static readonly Lazy<HfTokenizer> GenAi =
        new(() => HfTokenizer.Load(TokenizerJson(RepoPaths.GenAiTinyGpt2), Gpt2EndOfText, Gpt2EndOfText));

    // The GPT-2 vocabulary under Llama 3's pre-tokenizer (a Split regex, then ByteLevel without its own regex) and
    // ignore_merges, as Fixtures/make_hf_reference.js builds it for Hugging Face's library.
    private const string Llama3Pattern =
        @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    private static readonly Lazy<HfTokenizer> Llama3Style = new(() =>
    {
        var json = JsonNode.Parse(File.ReadAllText(TokenizerJson(RepoPaths.TorchTinyGpt2)))!;
        json["pre_tokenizer"] = JsonNode.Parse($$"""
            {"type": "Sequence", "pretokenizers": [
              {"type": "Split", "pattern": {"Regex": {{JsonValue.Create(Llama3Pattern).ToJsonString()}}},
               "behavior": "Isolated", "invert": false},
              {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}
            """);
        json["model"]!["ignore_merges"] = true;
        return LoadFromText(json.ToJsonString(), Gpt2EndOfText, Gpt2EndOfText);
    });

    public static IEnumerable<object[]> ReferencePrompts() =>
        GreedyReferencePrompts().Select(p => new object[] { p.Text, p.Ids });

    public static IEnumerable<object[]> TorchLibraryCases() =>
        HfLibraryReference("torch-tiny-gpt2").Select(c => new object[] { c.Text, c.Ids });

    public static IEnumerable<object[]> GenAiLibraryCases() =>
        HfLibraryReference("genai-tiny-random-gpt2").Select(c => new object[] { c.Text, c.Ids });

    // Special tokens decode to no text (see below), so texts holding one do not come back whole.
    public static TheoryData<string> RoundTripTexts() => new(GreedyReferencePrompts().Select(p => p.Text)
        .Concat(HfLibraryReference("torch-tiny-gpt2").Select(c => c.Text).Where(t => !t.Contains("<|endoftext|>")))
        .Concat(["Ünïcödé ☕ → ∑ 𝔘 \u0000 \u00ad end", "tab\tand  double  spaces\n\n"]));

    [Theory]
    [MemberData(nameof(ReferencePrompts))]
    public void Torch_fixture_tokenizer_encodes_the_reference_prompts_to_their_ids(string text, int[] ids) =>
        Assert.Equal(ids, Torch.Value.Encode(text, addBos: false));

    [Theory]
    [MemberData(nameof(ReferencePrompts))]
    public void GenAi_fixture_tokenizer_encodes_the_reference_prompts_to_the_same_ids(string text, int[] ids) =>
        Assert.Equal(ids, GenAi.Value.Encode(text, addBos: false));

    [Theory]
    [MemberData(nameof(TorchLibraryCases))]
    public void Torch_fixture_tokenizer_matches_hugging_face_tokenizers_on_unicode_whitespace_and_special_tokens(
        string text, int[] ids) => Assert.Equal(ids, Torch.Value.Encode(text, addBos: false));

    [Theory]
    [MemberData(nameof(GenAiLibraryCases))]
    public void GenAi_fixture_tokenizer_matches_hugging_face_tokenizers_including_its_whitespace_added_tokens(
        string text, int[] ids) => Assert.Equal(ids, GenAi.Value.Encode(text, addBos: false));

    public static IEnumerable<object[]> Llama3StyleLibraryCases() =>
        HfLibraryReference("torch-tiny-gpt2-llama3-style").Select(c => new object[] { c.Text, c.Ids });

    [Theory]
    [MemberData(nameof(Llama3StyleLibraryCases))]
    public void Split_regex_pre_tokenizer_with_ignore_merges_matches_hugging_face_tokenizers(string text, int[] ids) =>
        Assert.Equal(ids, Llama3Style.Value.Encode(text, addBos: false));

    [Theory]
    [MemberData(nameof(RoundTripTexts))]
    public void Decoding_the_encoding_gives_the_text_back(string text)
    {
        Assert.Equal(text, Decode(Torch.Value, Torch.Value.Encode(text, addBos: false)));
        Assert.Equal(text, Decode(GenAi.Value, GenAi.Value.Encode(text, addBos: false)));
    }

    [Fact]
    public void Add_bos_prepends_the_bos_id() =>
        Assert.Equal([Gpt2EndOfText, 15496], Torch.Value.Encode("Hello", addBos: true));

    [Fact]
    public void Pieces_are_bytes_so_a_character_split_across_tokens_decodes_byte_by_byte()
    {
        // "😀" is four UTF-8 bytes; GPT-2 spells it as two tokens, neither of them valid UTF-8 alone.
        var ids = Torch.Value.Encode("😀", addBos: false);
        Assert.Equal(2, ids.Length);
        var first = Torch.Value.DecodePiece(Gpt2EndOfText, ids[0]).ToArray();
        var second = Torch.Value.DecodePiece(ids[0], ids[1]).ToArray();
        Assert.Equal("😀"u8.ToArray(), first.Concat(second).ToArray());
        Assert.Equal(0xF0, first[0]);
    }

    [Fact]
    public void Vocabulary_size_counts_the_added_tokens()
    {
        Assert.Equal(50257, Torch.Value.VocabSize);
        Assert.Equal(50295, GenAi.Value.VocabSize);
    }

    [Fact]
    public void Special_tokens_decode_to_no_text_and_other_added_tokens_to_their_content()
    {
        Assert.Empty(GenAi.Value.DecodePiece(0, Gpt2EndOfText).ToArray());
        Assert.Equal("  "u8.ToArray(), GenAi.Value.DecodePiece(0, 50286).ToArray());
    }
}
