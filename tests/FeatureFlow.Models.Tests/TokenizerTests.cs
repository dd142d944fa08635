using System.Text;
using FeatureFlow.Models.Tokenization;

namespace FeatureFlow.Models.Tests;

public class TokenizerTests
{
    private static readonly Llama2cTokenizer Tokenizer = Llama2cTokenizer.Load(Path.Combine(RepoPaths.Stories260kModel, "tok512.bin"), 512);

    public static IEnumerable<object[]> Vectors() => RunCReference.EncodeVectors().Select(v => new object[] { v.Text, v.Ids });

    [Theory]
    [MemberData(nameof(Vectors))]
    public void Encode_matches_run_c(string text, int[] expected) =>
        Assert.Equal(expected, Tokenizer.Encode(text, addBos: true));

    [Fact]
    public void Empty_text_is_bos_alone() => Assert.Equal([1], Tokenizer.Encode("", addBos: true));

    [Fact]
    public void Decoding_run_c_greedy_tokens_reproduces_its_text()
    {
        var c = RunCReference.Case("greedy_prompt_once_upon_a_time");
        var bytes = new List<byte>();
        var previous = 1;
        foreach (var token in c.GeneratedInOrder)
        {
            bytes.AddRange(Tokenizer.DecodePiece(previous, token).ToArray());
            previous = token;
        }
        // run.c prints a final newline after the loop.
        Assert.Equal(c.Text, Encoding.UTF8.GetString(bytes.ToArray()) + "\n");
    }

    [Fact]
    public void First_piece_after_bos_loses_its_leading_space_and_later_ones_keep_it()
    {
        var once = Tokenizer.Encode("Once", addBos: true)[1];
        Assert.Equal("Once", Encoding.UTF8.GetString(Tokenizer.DecodePiece(1, once)));
        Assert.Equal(" Once", Encoding.UTF8.GetString(Tokenizer.DecodePiece(400, once)));
    }

    [Fact]
    public void Byte_fallback_tokens_decode_to_their_byte()
    {
        Assert.Equal([0xE2], Tokenizer.DecodePiece(5, 0xE2 + 3).ToArray());
        Assert.Equal("<0xE2>", Tokenizer.Piece(0xE2 + 3));
    }

    [Fact]
    public void Truncated_file_is_a_clear_error()
    {
        var path = Path.GetTempFileName();
        File.WriteAllBytes(path, File.ReadAllBytes(Path.Combine(RepoPaths.Stories260kModel, "tok512.bin"))[..100]);
        var e = Assert.Throws<InvalidDataException>(() => Llama2cTokenizer.Load(path, 512));
        Assert.Contains(path, e.Message);
        File.Delete(path);
    }
}
