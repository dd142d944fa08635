using System.Security.Cryptography;
using System.Text.Json;
using FeatureFlow.Models;
using FeatureFlow.Models.Folder;
using FeatureFlow.Models.Formats;

namespace FeatureFlow.Steering.Packs;

/// <summary>Where a pack term came from: a flow-graph node (or hand-picked feature) and its cosine to the seed's chain.</summary>
public sealed record PackSource(string Feature, float Score, string Role);

/// <summary>A pack's JSON metadata (stored in the file's safetensors <c>__metadata__</c>).</summary>
public sealed record PackMetadata
{
    public required string Name { get; init; }
    public string Description { get; init; } = "";
    public required string ModelFingerprint { get; init; }
    public string Seed { get; init; } = "";
    public IReadOnlyList<PackSource> Sources { get; init; } = [];
    public string Mode { get; init; } = "";
    public string Schedule { get; init; } = "";
    public string Operation { get; init; } = "";
    /// <summary>"raw" or "threshold" (coefficients in units of each feature's JumpReLU threshold).</summary>
    public string Units { get; init; } = "raw";
    public float DefaultStrength { get; init; } = 1f;
    public float[] RecommendedRange { get; init; } = [0f, 2f];
    /// <summary>Words that mark the pack's theme in generated text (for the theme-word rate of <c>steer report</c>).</summary>
    public IReadOnlyList<string> ThemeWords { get; init; } = [];
    public string ContentSha256 { get; init; } = "";
    public string BuildCommand { get; init; } = "";
}

/// <summary>
/// A steering pack: named, versioned-by-content steering terms for one model, in one safetensors
/// file. Each term has a site, an operation, a coefficient (s, r or c) and a feature (decoder row,
/// plus encoder row, bias and threshold for rescale/clamp). Applied with a strength (see
/// <see cref="SteeringTerm.Strength"/>): 0 is the unsteered model, 1 the pack as built.
/// </summary>
public sealed class SteeringPack
{
    public const string Extension = ".pack.safetensors";
    private const string MetadataKey = "featureflow.pack";

    public SteeringPack(PackMetadata metadata, IReadOnlyList<SteeringTerm> terms)
    {
        Terms = terms;
        Metadata = metadata with { ContentSha256 = ContentHash(terms) };
    }

    public PackMetadata Metadata { get; }
    public string Name => Metadata.Name;
    /// <summary>The terms at strength 1.</summary>
    public IReadOnlyList<SteeringTerm> Terms { get; }

    public static string Fingerprint(ModelManifest manifest) =>
        $"{manifest.Name}:{manifest.Provenance.Checkpoint.Sha256}:d{manifest.Architecture.DModel}:L{manifest.Architecture.Layers}";

    /// <summary>The pack's terms at <paramref name="strength"/>, labelled with the request field for error messages.</summary>
    public IEnumerable<SteeringTerm> At(float strength, SteeringScope scope, string field) =>
        Terms.Select((t, i) => t with { Strength = t.Strength * strength, Scope = scope, Field = $"{field} (pack '{Name}' term {i})" });

    public void Write(string path) => Writer().Write(path);

    /// <summary>The bytes <see cref="Write"/> stores, e.g. for uploading to a server's registry.</summary>
    public byte[] ToBytes() => Writer().ToBytes();

    private SafeTensorsWriter Writer()
    {
        var d = Terms.Count == 0 ? 0 : Terms[0].Feature.Decoder.Length;
        var n = Terms.Count;
        float[] Stack(Func<SteeringTerm, float[]?> part) => Terms.SelectMany(t => part(t) ?? new float[d]).ToArray();
        return new SafeTensorsWriter()
            .Metadata(MetadataKey, JsonSerializer.Serialize(Metadata, Json))
            .AddInt32("terms.site", Terms.Select(t => t.Site.Index).ToArray(), n)
            .AddInt32("terms.operation", Terms.Select(t => (int)t.Operation).ToArray(), n)
            .AddFloat32("terms.coefficient", Terms.Select(t => t.Value).ToArray(), n)
            .AddFloat32("terms.decoder", Stack(t => t.Feature.Decoder), n, d)
            .AddFloat32("terms.encoder", Stack(t => t.Feature.Encoder), n, d)
            .AddFloat32("terms.encoder_bias", Terms.Select(t => t.Feature.EncoderBias).ToArray(), n)
            .AddFloat32("terms.threshold", Terms.Select(t => t.Feature.Threshold).ToArray(), n);
    }

    /// <summary>Reads a pack and checks it belongs to <paramref name="manifest"/>'s model.</summary>
    public static SteeringPack Read(string path, ModelManifest manifest) => Read(SafeTensorsFile.Read(path), manifest);

    /// <summary>
    /// Reads a pack from bytes (an upload) with the same checks as a file; <paramref name="source"/> labels errors.
    /// Malformed input of any shape surfaces as <see cref="InvalidDataException"/>, as the caller cannot trust it.
    /// </summary>
    public static SteeringPack Read(byte[] bytes, string source, ModelManifest manifest)
    {
        try
        {
            return Read(SafeTensorsFile.Read(bytes, source), manifest);
        }
        catch (Exception e)
            when (e is InvalidOperationException or FormatException or OverflowException or ArgumentException)
        {
            throw new InvalidDataException($"{source}: malformed pack file ({e.Message})", e);
        }
    }

    private static SteeringPack Read(SafeTensorsFile file, ModelManifest manifest)
    {
        var path = file.Path;
        if (!file.Metadata.TryGetValue(MetadataKey, out var json)) throw new InvalidDataException($"{path}: not a steering pack (no '{MetadataKey}' metadata)");
        PackMetadata metadata;
        try { metadata = JsonSerializer.Deserialize<PackMetadata>(json, Json) ?? throw new InvalidDataException($"{path}: empty pack metadata"); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: malformed pack metadata ({e.Message})", e); }
        var expected = Fingerprint(manifest);
        if (metadata.ModelFingerprint != expected)
            throw new InvalidDataException($"{path}: pack '{metadata.Name}' was built for model '{metadata.ModelFingerprint}', not '{expected}'");
        var d = manifest.Architecture.DModel;
        var sites = file.GetInt32("terms.site");
        var ops = file.GetInt32("terms.operation");
        var coefficients = file.GetFloat32("terms.coefficient");
        var decoder = file.GetFloat32("terms.decoder");
        var encoder = file.GetFloat32("terms.encoder");
        var bias = file.GetFloat32("terms.encoder_bias");
        var threshold = file.GetFloat32("terms.threshold");
        var n = sites.Length;
        if (decoder.Length != n * d || encoder.Length != n * d || ops.Length != n || coefficients.Length != n || bias.Length != n || threshold.Length != n)
            throw new InvalidDataException($"{path}: term tensors disagree in length or do not have d_model = {d}");
        var terms = new SteeringTerm[n];
        for (var i = 0; i < n; i++)
        {
            if ((uint)sites[i] >= (uint)(manifest.Architecture.Layers * Site.KindsPerLayer)) throw new InvalidDataException($"{path}: term {i} names site index {sites[i]}, which the model does not have");
            if (!Enum.IsDefined((SteeringOperation)ops[i])) throw new InvalidDataException($"{path}: term {i} has unknown operation {ops[i]}");
            var op = (SteeringOperation)ops[i];
            var feature = new FeatureVector(decoder[(i * d)..((i + 1) * d)], op == SteeringOperation.Add ? null : encoder[(i * d)..((i + 1) * d)], bias[i], threshold[i]);
            terms[i] = new SteeringTerm(Site.FromIndex(sites[i]), op, coefficients[i], feature);
        }
        var pack = new SteeringPack(metadata, terms);
        if (metadata.ContentSha256 != "" && metadata.ContentSha256 != pack.Metadata.ContentSha256)
            throw new InvalidDataException($"{path}: content hash {pack.Metadata.ContentSha256} does not match the recorded {metadata.ContentSha256} (the file was altered)");
        return pack;
    }

    /// <summary>sha256 over every term's numbers, in order: two packs with the same hash steer identically.</summary>
    private static string ContentHash(IReadOnlyList<SteeringTerm> terms)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var t in terms)
        {
            hash.AppendData(BitConverter.GetBytes(t.Site.Index));
            hash.AppendData(BitConverter.GetBytes((int)t.Operation));
            hash.AppendData(BitConverter.GetBytes(t.Value));
            hash.AppendData(System.Runtime.InteropServices.MemoryMarshal.AsBytes(t.Feature.Decoder.AsSpan()));
            hash.AppendData(System.Runtime.InteropServices.MemoryMarshal.AsBytes((t.Feature.Encoder ?? []).AsSpan()));
            hash.AppendData(BitConverter.GetBytes(t.Feature.EncoderBias));
            hash.AppendData(BitConverter.GetBytes(t.Feature.Threshold));
        }
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }

    public static readonly JsonSerializerOptions Json = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower, WriteIndented = false };
}
