using FeatureFlow.Models.Tokenization;
using static FeatureFlow.Models.Tests.Tokenization.HfTokenizerTestSupport;

namespace FeatureFlow.Models.Tests.Tokenization;

/// <summary>
/// Llama-2-style tokenizer.json (SentencePiece BPE with byte fallback) made from stories260k's tok512.bin, against
/// <see cref="Llama2cTokenizer"/>, which reproduces llama2.c's own encoder on its reference vectors.
/// </summary>
public class HfSentencePieceBpeTests
{
    private const int VocabSize = 512;
    private static readonly string TokBin = Path.Combine(RepoPaths.Stories260kModel, "tok512.bin");
    private static readonly Lazy<Llama2cTokenizer> Reference = new(() => Llama2cTokenizer.Load(TokBin, VocabSize));
    private static readonly Lazy<HfTokenizer> Converted =
        new(() => LoadFromText(Llama2cToTokenizerJson.Convert(TokBin, VocabSize), bosId: 1, eosId: 2));

    public static TheoryData<string> Texts() => new(RunCReference.EncodeVectors().Select(v => v.Text).Concat(
    [
        // Characters outside the 512-piece vocabulary: byte fallback, including 4-byte characters.
        "Zürich naïve façade", "日本語のテキスト", "emoji 😀 and 👍🏽", "tabs\tand\nnew lines\r\n",
        "  lead and trail  ",
    ]));

    [Fact]
    public void Converted_tokenizer_reproduces_llama2c_reference_vectors()
    {
        foreach (var (text, ids) in RunCReference.EncodeVectors())
            Assert.Equal(ids, Converted.Value.Encode(text, addBos: true));
    }

    [Theory]
    [MemberData(nameof(Texts))]
    public void Converted_tokenizer_encodes_like_llama2c_including_byte_fallback(string text) =>
        Assert.Equal(Reference.Value.Encode(text, addBos: true), Converted.Value.Encode(text, addBos: true));

    [Theory]
    [MemberData(nameof(Texts))]
    public void Decoding_after_bos_gives_the_text_back_and_the_same_bytes_as_llama2c(string text)
    {
        var ids = Converted.Value.Encode(text, addBos: false);
        Assert.Equal(text, Decode(Converted.Value, ids));
        Assert.Equal(Decode(Reference.Value, ids), Decode(Converted.Value, ids));
    }

    [Fact]
    public void Byte_fallback_spells_an_outside_character_as_its_utf8_bytes()
    {
        // "☕" is E2 98 95; byte piece <0xHH> has id HH + 3.
        var ids = Converted.Value.Encode("☕", addBos: false);
        Assert.Equal([0xE2 + 3, 0x98 + 3, 0x95 + 3], ids[^3..]);
        Assert.Equal([0xE2], Converted.Value.DecodePiece(ids[^4], ids[^3]).ToArray());
    }

    [Fact]
    public void Only_the_first_piece_after_bos_loses_its_dummy_prefix_space()
    {
        var once = Converted.Value.Encode("Once", addBos: false).Single();
        Assert.Equal("Once"u8.ToArray(), Converted.Value.DecodePiece(1, once).ToArray());
        Assert.Equal(" Once"u8.ToArray(), Converted.Value.DecodePiece(400, once).ToArray());
    }

    [Fact]
    public void Special_tokens_in_the_text_are_their_ids_and_the_text_after_them_gets_its_own_dummy_prefix() =>
        // Hugging Face normalizes each stretch between added tokens on its own, so "<s>x" = <s>, "▁x".
        Assert.Equal(Converted.Value.Encode("x", addBos: true), Converted.Value.Encode("<s>x", addBos: false));
}
