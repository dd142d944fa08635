using System.Text.Json.Nodes;
using FeatureFlow.Models.Tokenization;
using static FeatureFlow.Models.Tests.Tokenization.HfTokenizerTestSupport;

namespace FeatureFlow.Models.Tests.Tokenization;

/// <summary>
/// A handmade Unigram tokenizer.json whose best segmentations are worked out by hand below (Hugging Face's
/// tokenizers library gave the same ids for the same file when these tests were written).
/// </summary>
public class HfUnigramTests
{
    // id: piece (score). Ids 0-2 control tokens, 3-258 the byte pieces <0x00>..<0xFF>, then:
    private static readonly (string Piece, double Score)[] Words =
    [
        ("▁", -2.0),    // 259
        ("a", -3.0),    // 260
        ("b", -3.0),    // 261
        ("c", -3.0),    // 262
        ("▁a", -2.5),   // 263
        ("ab", -2.0),   // 264
        ("bc", -2.2),   // 265
        ("abc", -4.5),  // 266
        ("▁ab", -3.0),  // 267
    ];

    private static readonly Lazy<HfTokenizer> WithByteFallback = new(() => Load(byteFallback: true));
    private static readonly Lazy<HfTokenizer> WithoutByteFallback = new(() => Load(byteFallback: false));

    [Fact]
    public void Viterbi_picks_the_highest_total_score_not_the_longest_first_piece()
    {
        // "▁abc": ▁a+bc = -4.7 beats ▁ab+c = -6.0, ▁+abc = -6.5, ▁+ab+c = -7.0, ▁+a+bc = -7.2.
        Assert.Equal([263, 265], WithByteFallback.Value.Encode("abc", addBos: false));
    }

    [Fact]
    public void Segmentation_is_per_metaspace_word()
    {
        // "▁ab" alone: ▁ab = -3.0 beats ▁a+b = -5.5 and ▁+ab = -4.0; "▁c": ▁+c = -5.0 is the only way.
        Assert.Equal([1, 267, 259, 262], WithByteFallback.Value.Encode("ab c", addBos: true));
    }

    [Fact]
    public void Characters_without_a_piece_fall_back_to_their_bytes_fused_into_one_run()
    {
        // "▁aé€": ▁a, then é€ (C3 A9, E2 82 AC) as one unknown run spelled byte by byte (byte HH = id HH + 3).
        Assert.Equal([263, 0xC3 + 3, 0xA9 + 3, 0xE2 + 3, 0x82 + 3, 0xAC + 3],
            WithByteFallback.Value.Encode("aé€", addBos: false));
    }

    [Fact]
    public void Without_byte_fallback_a_run_of_outside_characters_is_one_unknown_token() =>
        Assert.Equal([263, 0, 261], WithoutByteFallback.Value.Encode("aé€b", addBos: false));

    [Fact]
    public void Decoding_restores_spaces_bytes_and_drops_the_first_prefix()
    {
        const string text = "abc ab aé€ c";
        Assert.Equal(text, Decode(WithByteFallback.Value, WithByteFallback.Value.Encode(text, addBos: false)));
        Assert.Equal(" a"u8.ToArray(), WithByteFallback.Value.DecodePiece(259, 263).ToArray());
        Assert.Equal("a"u8.ToArray(), WithByteFallback.Value.DecodePiece(1, 263).ToArray());
    }

    private static HfTokenizer Load(bool byteFallback)
    {
        var vocab = new JsonArray();
        foreach (var control in new[] { "<unk>", "<s>", "</s>" }) vocab.Add(new JsonArray(control, 0.0));
        for (var b = 0; b < 256; b++) vocab.Add(new JsonArray($"<0x{b:X2}>", 0.0));
        foreach (var (piece, score) in Words) vocab.Add(new JsonArray(piece, score));
        var json = new JsonObject
        {
            ["added_tokens"] = new JsonArray(Enumerable.Range(0, 3).Select(id => (JsonNode)new JsonObject
            {
                ["id"] = id, ["content"] = vocab[id]![0]!.GetValue<string>(), ["normalized"] = false, ["special"] = true,
            }).ToArray()),
            ["normalizer"] = null,
            ["pre_tokenizer"] = new JsonObject
            {
                ["type"] = "Metaspace", ["replacement"] = "▁", ["prepend_scheme"] = "always", ["split"] = true,
            },
            ["decoder"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["decoders"] = new JsonArray(
                    Llama2cToTokenizerJson.Replace("▁", " "),
                    new JsonObject { ["type"] = "ByteFallback" },
                    new JsonObject { ["type"] = "Fuse" },
                    new JsonObject { ["type"] = "Strip", ["content"] = " ", ["start"] = 1, ["stop"] = 0 }),
            },
            ["model"] = new JsonObject
            {
                ["type"] = "Unigram", ["unk_id"] = 0, ["byte_fallback"] = byteFallback, ["vocab"] = vocab,
            },
        };
        return LoadFromText(json.ToJsonString(), bosId: 1, eosId: 2);
    }
}
