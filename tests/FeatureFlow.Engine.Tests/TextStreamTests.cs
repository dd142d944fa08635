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

    private static string Push(TextStream stream, int token)
    {
        stream.Push(token);
        return stream.TakeFinal();
    }

    [Fact]
    public void A_character_split_over_byte_tokens_is_emitted_whole()
    {
        var euro = U("€");
        var stream = new TextStream(new PieceTokenizer([euro[0]], [euro[1]], [euro[2]]), 0, []);
        Assert.Equal("", Push(stream, 0));
        Assert.Equal("", Push(stream, 1));
        Assert.Equal("€", Push(stream, 2));
    }

    [Fact]
    public void Text_that_may_begin_a_stop_string_is_held_until_it_cannot()
    {
        var stream = new TextStream(new PieceTokenizer(U("Hel"), U("lo"), U(" wor"), U("ld")), 0, ["lo w", "xyz"]);
        Assert.Equal("He", Push(stream, 0));   // "l" could begin "lo w"
        Assert.Equal("l", Push(stream, 1));    // "lo" could begin "lo w"
        Assert.Equal("", Push(stream, 2));     // "lo w" found: nothing from it on is emitted
        Assert.True(stream.Stopped);
    }

    [Fact]
    public void Held_text_is_released_when_it_stops_matching_and_at_the_end()
    {
        var stream = new TextStream(new PieceTokenizer(U("ab"), U("c"), U("b")), 0, ["bx!"]);
        Assert.Equal("a", Push(stream, 0));
        Assert.Equal("bc", Push(stream, 1));
        Assert.Equal("", Push(stream, 2));
        stream.Flush();
        Assert.Equal("b", stream.TakeFinal());
        Assert.False(stream.Stopped);
    }

    [Fact]
    public void Final_text_survives_the_buffer_growing_and_matches_what_was_taken()
    {
        var stream = new TextStream(new PieceTokenizer(U("once "), U("upon "), U("a time ")), 0, [], capacity: 4);
        var taken = new System.Text.StringBuilder();
        for (var i = 0; i < 30; i++) taken.Append(Push(stream, i % 3));
        var expected = string.Concat(Enumerable.Repeat("once upon a time ", 10));
        Assert.Equal(expected, taken.ToString());
        Assert.Equal(expected, new string(stream.Buffer, 0, stream.FinalLength));
    }

    [Fact]
    public void Invalid_utf8_becomes_replacement_characters_as_the_utf8_encoding_decodes_it_without_allocating()
    {
        // A lone continuation byte, a lead byte cut short by ASCII, an overlong form, then a valid 4-byte character
        // split over two tokens: what UTF8Encoding makes of the bytes as a whole.
        byte[][] pieces = [[0x80], [0xE2, 0x82], U("a"), [0xC0, 0xAF], [0xF0, 0x9F], [0x98, 0x80], U("b")];
        var stream = new TextStream(new PieceTokenizer(pieces), 0, [], capacity: 64);
        for (var i = 0; i < pieces.Length; i++) stream.Push(i);
        // The second pass is timed: the text buffer and the byte buffer already have room.
        var before = GC.GetAllocatedBytesForCurrentThread();
        for (var i = 0; i < pieces.Length; i++) stream.Push(i);
        var allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        stream.Flush();
        var all = pieces.SelectMany(p => p).ToArray();
        var expected = Encoding.UTF8.GetString([.. all, .. all]);
        Assert.Equal(expected, new string(stream.Buffer, 0, stream.FinalLength));
        Assert.Equal(0, allocated);
    }
}
