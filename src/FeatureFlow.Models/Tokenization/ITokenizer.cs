namespace FeatureFlow.Models.Tokenization;

public interface ITokenizer
{
    int VocabSize { get; }
    int BosId { get; }
    int EosId { get; }

    /// <summary>Encodes text; <paramref name="addBos"/> prepends the BOS id.</summary>
    int[] Encode(string text, bool addBos);

    /// <summary>
    /// The bytes that <paramref name="token"/> contributes after <paramref name="previous"/>. Bytes, not
    /// text: byte-fallback tokens can split a UTF-8 character across tokens.
    /// </summary>
    ReadOnlySpan<byte> DecodePiece(int previous, int token);
}

public static class TokenizerExtensions
{
    /// <summary>The most text bytes one token stands for (at least 1), which bounds the characters it can add.</summary>
    public static int LongestPieceBytes(this ITokenizer tokenizer) =>
        Enumerable.Range(0, tokenizer.VocabSize).Max(t => Math.Max(1, tokenizer.DecodePiece(0, t).Length));
}
