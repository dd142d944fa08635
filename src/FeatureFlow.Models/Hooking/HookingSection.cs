using System.Text.Json.Serialization;

namespace FeatureFlow.Models.Hooking;

/// <summary>
/// The manifest's <c>hooking</c> section: which family of third-party graph <c>featureflow hook</c> recognised, where
/// it put each site, what it rewrote, the source graph's own I/O, and what <see cref="InterfaceAdapter"/> changed at
/// the boundary so that the folder's hooked and plain graphs have our engine's interface.
/// </summary>
public sealed record HookingSection
{
    /// <summary>The recogniser that matched (<see cref="IDecoderFamily.Name"/>).</summary>
    public required string Family { get; init; }
    /// <summary>The input graph as given; the folder keeps it unchanged (genai_config.json names it).</summary>
    public required string SourceGraph { get; init; }
    /// <summary>The graph's own float type ("float32" or "float16"); the steering inputs are float32 either way.</summary>
    public required string FloatType { get; init; }
    /// <summary>How float32 steering meets a float16 graph; absent for float32 graphs.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? FloatCast { get; init; }
    /// <summary>The default-domain opset the input graph imported, when hooking had to raise it.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public long? OpsetRaisedFrom { get; init; }
    /// <summary>Fused nodes that hid a site and were split into equivalent plain operators.</summary>
    public required IReadOnlyList<string> Rewrites { get; init; }
    /// <summary>Every site, in <see cref="Site.Index"/> order.</summary>
    public required IReadOnlyList<HookedSite> Sites { get; init; }
    /// <summary>The source graph's own I/O (what ONNX Runtime GenAI drives); the folder's graphs have ours.</summary>
    public required DecoderIo Io { get; init; }
    /// <summary>
    /// How the folder's graphs differ from the source at the boundary (<see cref="InterfaceAdapter"/>): casts, the
    /// packed KV cache stacked and split, renames; empty when the source already had our interface.
    /// </summary>
    public required IReadOnlyList<string> InterfaceChanges { get; init; }
}

/// <summary>One site: its hook name, the graph value the hook reads, and how that value was found.</summary>
public sealed record HookedSite(string Site, string Value, string Found);

/// <summary>A graph input or output: name, element type ("int64", "float32", …) and declared shape.</summary>
public sealed record IoTensor(string Name, string Type, IReadOnlyList<string> Shape);

/// <summary>The graph's I/O besides steering: what to feed each step and what comes back.</summary>
public sealed record DecoderIo
{
    public required IoTensor InputIds { get; init; }
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public IoTensor? PositionIds { get; init; }
    /// <summary>Covers past and new tokens ([batch, total_sequence_length]).</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public IoTensor? AttentionMask { get; init; }
    public required IoTensor Logits { get; init; }
    public required KvCacheIo Kv { get; init; }
    /// <summary>Inputs the runner must also feed (e.g. seqlens_k), by their own names.</summary>
    public required IReadOnlyList<IoTensor> OtherInputs { get; init; }
}

/// <summary>How the KV cache crosses the graph boundary; names are printf patterns over the layer (<c>past_%d</c>).</summary>
public sealed record KvCacheIo
{
    public const string PackedPacking = "packed", SeparatePacking = "separate";

    /// <summary>
    /// "packed": one tensor per layer, [2, batch, heads, past, head_size] with keys then values
    /// (<see cref="Past"/>, <see cref="Present"/>); "separate": [batch, heads, past, head_size] keys and values
    /// (<see cref="PastKey"/>, <see cref="PastValue"/>, <see cref="PresentKey"/>, <see cref="PresentValue"/>).
    /// </summary>
    public required string Packing { get; init; }
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? Past { get; init; }
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? Present { get; init; }
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? PastKey { get; init; }
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? PastValue { get; init; }
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? PresentKey { get; init; }
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? PresentValue { get; init; }
    public required string Type { get; init; }
    /// <summary>Layer 0's past as the graph declares it (dimension names or sizes).</summary>
    public required IReadOnlyList<string> PastShape { get; init; }
    public required int Heads { get; init; }
    public required int HeadSize { get; init; }

    public string PastName(int layer, bool value) => Name(Packing == PackedPacking ? Past : value ? PastValue : PastKey, layer);

    public string PresentName(int layer, bool value) =>
        Name(Packing == PackedPacking ? Present : value ? PresentValue : PresentKey, layer);

    private static string Name(string? pattern, int layer) =>
        (pattern ?? throw new InvalidOperationException("KV name pattern missing for this packing"))
            .Replace("%d", layer.ToString(System.Globalization.CultureInfo.InvariantCulture), StringComparison.Ordinal);
}
