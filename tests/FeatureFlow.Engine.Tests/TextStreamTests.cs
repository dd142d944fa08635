using System.Text;
using FeatureFlow.Models.Tokenization;

namespace FeatureFlow.Engine.Tests;

public class TextStreamTests
{
    /// <summary>Token i is the i-th piece given.</summary>
    private sealed class PieceTokenizer(params byte[][] pieces) : ITokenizer
    {
        public int VocabSize => pieces.Length;
        public int BosId => -1;
        public int EosId => -2;
        public int[] Encode(string text, bool addBos) => throw new NotSupportedException();
        public ReadOnlySpan<byte> DecodePiece(int previous, int token) => pieces[token];
    }

    private static byte[] U(string s) => Encoding.UTF8.GetBytes(s);

    [Fact]
    public void A_character_split_over_byte_tokens_is_emitted_whole()
    {
        var euro = U("€");
        var stream = new TextStream(new PieceTokenizer([euro[0]], [euro[1]], [euro[2]]), 0, []);
        Assert.Equal("", stream.Push(0));
        Assert.Equal("", stream.Push(1));
        Assert.Equal("€", stream.Push(2));
    }

    [Fact]
    public void Text_that_may_begin_a_stop_string_is_held_until_it_cannot()
    {
        var stream = new TextStream(new PieceTokenizer(U("Hel"), U("lo"), U(" wor"), U("ld")), 0, ["lo w", "xyz"]);
        Assert.Equal("He", stream.Push(0));   // "l" could begin "lo w"
        Assert.Equal("l", stream.Push(1));    // "lo" could begin "lo w"
        Assert.Equal("", stream.Push(2));     // "lo w" found: nothing from it on is emitted
        Assert.True(stream.Stopped);
    }

    [Fact]
    public void Held_text_is_released_when_it_stops_matching_and_at_the_end()
    {
        var stream = new TextStream(new PieceTokenizer(U("ab"), U("c"), U("b")), 0, ["bx!"]);
        Assert.Equal("a", stream.Push(0));
        Assert.Equal("bc", stream.Push(1));
        Assert.Equal("", stream.Push(2));
        Assert.Equal("b", stream.Flush());
        Assert.False(stream.Stopped);
    }
}
