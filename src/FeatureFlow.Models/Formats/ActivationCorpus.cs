using System.Text.Json;

namespace FeatureFlow.Models.Formats;

/// <summary>
/// <c>corpus.json</c> of a collected activation corpus. Chunk files share one name across
/// <c>tokens/</c> ([rows, length] ids) and each site's folder ([rows·length, d] activations), so
/// activation i of a chunk belongs to token i of the same chunk.
/// </summary>
public sealed record CorpusManifest(
    string Model, int DModel, IReadOnlyList<string> Sites, string DType, int SequenceLength,
    IReadOnlyList<CorpusChunk> Chunks, CorpusSource Source)
{
    public const string FileName = "corpus.json";

    public static readonly JsonSerializerOptions Json = new() { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    public long TotalTokens => Chunks.Sum(c => (long)c.Rows * c.Length);

    public void Write(string directory) => File.WriteAllText(Path.Combine(directory, FileName), JsonSerializer.Serialize(this, Json) + "\n");
}

public sealed record CorpusChunk(string File, int Rows, int Length, string Source);

public sealed record CorpusSource(int GeneratedSequences, ulong Seed, float Temperature, float TopP, IReadOnlyList<string> TextFiles);

public sealed class ActivationCorpus
{
    private ActivationCorpus(string directory, CorpusManifest manifest)
    {
        Directory = directory;
        Manifest = manifest;
    }

    public string Directory { get; }
    public CorpusManifest Manifest { get; }

    public static ActivationCorpus Open(string directory)
    {
        var path = Path.Combine(directory, CorpusManifest.FileName);
        if (!File.Exists(path)) throw new FileNotFoundException($"no activation corpus at {Path.GetFullPath(directory)}: {CorpusManifest.FileName} is missing (run `featureflow collect`)", path);
        CorpusManifest? manifest;
        try { manifest = JsonSerializer.Deserialize<CorpusManifest>(File.ReadAllText(path), CorpusManifest.Json); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: malformed corpus manifest ({e.Message})", e); }
        return new ActivationCorpus(directory, manifest ?? throw new InvalidDataException($"{path}: empty corpus manifest"));
    }

    /// <summary>Every activation of <paramref name="site"/>, [tokens, d] row-major, chunks in order.</summary>
    public float[] ReadSite(Site site)
    {
        if (!Manifest.Sites.Contains(site.HookName)) throw new InvalidDataException($"{Directory}: the corpus has no activations for {site}");
        var result = new float[Manifest.TotalTokens * Manifest.DModel];
        long offset = 0;
        foreach (var chunk in Manifest.Chunks)
        {
            var values = SafeTensorsFile.Read(Path.Combine(Directory, site.HookName, chunk.File)).GetFloat32("activations");
            values.CopyTo(result, offset);
            offset += values.Length;
        }
        return result;
    }

    /// <summary>Every token id, aligned with <see cref="ReadSite"/>'s rows.</summary>
    public int[] ReadTokens() =>
        Manifest.Chunks.SelectMany(c => SafeTensorsFile.Read(Path.Combine(Directory, "tokens", c.File)).GetInt32("tokens")).ToArray();
}
