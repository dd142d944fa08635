using System.Text.Json;
using System.Text.Json.Serialization;

namespace FeatureFlow.Models.Folder;

/// <summary>
/// <c>featureflow.json</c>: what a model folder holds. Everything the server needs to load the model
/// and validate steering requests comes from here, never from the source checkpoint.
/// </summary>
public sealed record ModelManifest
{
    public const string FileName = "featureflow.json";
    public const string CurrentFormat = "featureflow.model/1";

    public string Format { get; init; } = CurrentFormat;
    public required string Name { get; init; }
    public required ModelArchitecture Architecture { get; init; }
    public required TokenizerEntry Tokenizer { get; init; }
    public required GraphEntry Graphs { get; init; }
    public required SteeringLayout Steering { get; init; }
    public required Provenance Provenance { get; init; }
    /// <summary>sha256 of every file the export wrote, by file name.</summary>
    public required SortedDictionary<string, string> Files { get; init; }
    /// <summary>
    /// How <c>featureflow hook</c> put the steering interface into a graph this project did not build, and the I/O
    /// a runner needs to drive that graph; absent (not even null) from the folders we export ourselves.
    /// </summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public Hooking.HookingSection? Hooking { get; init; }

    public static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower) },
    };

    public string ToJson() => JsonSerializer.Serialize(this, Json) + "\n";

    public static ModelManifest Parse(string json, string path)
    {
        ModelManifest? manifest;
        try { manifest = JsonSerializer.Deserialize<ModelManifest>(json, Json); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: malformed manifest ({e.Message})", e); }
        if (manifest is null) throw new InvalidDataException($"{path}: empty manifest");
        if (manifest.Format != CurrentFormat) throw new InvalidDataException($"{path}: format '{manifest.Format}' is not '{CurrentFormat}'");
        manifest.Architecture.Validate();
        return manifest;
    }
}

public sealed record TokenizerEntry(string Format, string File, int BosId, int EosId);

/// <summary>
/// The hooked graph the server runs, the same model without hooks (for comparison and ONNX Runtime GenAI), and
/// optionally the hooked graph with a shared, preallocated KV buffer for continuous batching
/// (<see cref="Export.KvCacheLayout.SharedBuffer"/>) and that graph without hooks, which the engine runs for steps
/// that steer and read out nothing. Each optional graph is absent from folders exported before it existed. Folders
/// exported while the engine had a third batched graph (add-only hooks, <c>batched_add</c>) still open: the entry is
/// ignored, since the hooked batched graph gives add-only rows the same bits.
/// </summary>
public sealed record GraphEntry(string Hooked, string Plain, string? Batched = null, string? BatchedPlain = null);

public sealed record SteeringLayout(int SlotsPerSite, IReadOnlyList<string> Sites, bool SiteOutputs);

public sealed record SourceFile(string File, string Sha256);

public sealed record Provenance(string Description, string License, SourceFile Checkpoint, SourceFile Tokenizer, string Exporter);
