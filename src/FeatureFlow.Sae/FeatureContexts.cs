using System.Text;
using FeatureFlow.Models.Formats;
using FeatureFlow.Models.Tokenization;

namespace FeatureFlow.Sae;

/// <summary>A place in the corpus where a feature fires: its activation, the text before, and the token itself.</summary>
public sealed record FeatureContext(float Activation, long Position, string Before, string Token);

public static class FeatureContexts
{
    /// <summary>The <paramref name="count"/> highest activations of one feature over a collected corpus (one per position).</summary>
    public static IReadOnlyList<FeatureContext> Top(SparseAutoencoder sae, int feature, ActivationCorpus corpus, ITokenizer tokenizer, int count, int contextTokens)
    {
        var activations = corpus.ReadSite(sae.Site);
        var tokens = corpus.ReadTokens();
        var values = Activations(sae, feature, activations);
        var best = Enumerable.Range(0, values.Length).Where(i => values[i] > 0f)
            .OrderByDescending(i => values[i]).ThenBy(i => i).Take(count).ToArray();
        var rowStarts = RowStarts(corpus.Manifest);
        return best.Select(i =>
        {
            var start = Math.Max(rowStarts(i), i - contextTokens);
            var before = new StringBuilder();
            for (var p = start; p < i; p++) before.Append(Piece(tokenizer, p > 0 ? tokens[p - 1] : tokenizer.BosId, tokens[p]));
            return new FeatureContext(values[i], i, before.ToString(), Piece(tokenizer, i > 0 ? tokens[i - 1] : tokenizer.BosId, tokens[i]));
        }).ToArray();
    }

    /// <summary>The feature's activation (the SAE's own encoding) at every corpus position.</summary>
    public static float[] Activations(SparseAutoencoder sae, int feature, ReadOnlySpan<float> activations)
    {
        var d = sae.DIn;
        var values = new float[activations.Length / d];
        var z = new float[sae.DSae];
        var scratch = new float[d];
        for (var i = 0; i < values.Length; i++)
        {
            sae.Encode(activations.Slice(i * d, d), z, scratch);
            values[i] = z[feature];
        }
        return values;
    }

    private static string Piece(ITokenizer tokenizer, int previous, int token) => Encoding.UTF8.GetString(tokenizer.DecodePiece(previous, token));

    /// <summary>Maps a corpus position to the first position of its sequence, so contexts never cross sequences.</summary>
    private static Func<long, long> RowStarts(CorpusManifest manifest)
    {
        var starts = new List<(long Start, long End, int Length)>();
        long offset = 0;
        foreach (var c in manifest.Chunks)
        {
            var size = (long)c.Rows * c.Length;
            starts.Add((offset, offset + size, c.Length));
            offset += size;
        }
        return i =>
        {
            var chunk = starts.First(s => i < s.End);
            return chunk.Start + (i - chunk.Start) / chunk.Length * chunk.Length;
        };
    }
}
