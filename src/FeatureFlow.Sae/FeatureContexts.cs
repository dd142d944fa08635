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

    /// <summary>
    /// Features most selective for each word: mean activation on the token that ends the word, divided by
    /// the feature's mean over the corpus (words are runs of letters, case-insensitive).
    /// </summary>
    public static IReadOnlyDictionary<string, (int Feature, double OnWord, double Overall, int Occurrences)[]> FindByWord(
        SparseAutoencoder sae, ActivationCorpus corpus, ITokenizer tokenizer, IReadOnlyList<string> words, int top, long maxTokens)
    {
        var activations = corpus.ReadSite(sae.Site);
        var tokens = corpus.ReadTokens();
        var n = (int)Math.Min(tokens.Length, maxTokens);
        var pieces = new string[n];
        for (var i = 0; i < n; i++) pieces[i] = Piece(tokenizer, i > 0 ? tokens[i - 1] : tokenizer.BosId, tokens[i]);
        var index = words.Select((w, i) => (w.ToLowerInvariant(), i)).ToDictionary(p => p.Item1, p => p.i);
        var overall = new double[sae.DSae];
        var onWord = new double[words.Count, sae.DSae];
        var occurrences = new int[words.Count];
        var z = new float[sae.DSae];
        var scratch = new float[sae.DIn];
        var word = new StringBuilder();
        for (var i = 0; i < n; i++)
        {
            var piece = pieces[i];
            foreach (var ch in piece)
                if (char.IsLetter(ch)) word.Append(char.ToLowerInvariant(ch));
                else word.Clear();
            var next = i + 1 < n ? pieces[i + 1] : " ";
            var endsWord = piece.Length > 0 && char.IsLetter(piece[^1]) && (next.Length == 0 || !char.IsLetter(next[0]));
            sae.Encode(activations.AsSpan(i * sae.DIn, sae.DIn), z, scratch);
            for (var j = 0; j < z.Length; j++) overall[j] += z[j];
            if (endsWord && index.TryGetValue(word.ToString(), out var w))
            {
                occurrences[w]++;
                for (var j = 0; j < z.Length; j++) onWord[w, j] += z[j];
            }
        }
        return index.ToDictionary(p => p.Key, p => occurrences[p.Value] == 0 ? [] : Enumerable.Range(0, sae.DSae)
            .Select(j => (Feature: j, OnWord: onWord[p.Value, j] / occurrences[p.Value], Overall: overall[j] / n, Occurrences: occurrences[p.Value]))
            .OrderByDescending(r => r.OnWord / (r.Overall + 1e-3)).ThenBy(r => r.Feature).Take(top).ToArray());
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
