using System.Text.Json;
using System.Text.Json.Nodes;

namespace FeatureFlow.Models.Hooking;

/// <summary>
/// What the JSON files shipped beside a third-party graph say about it: the block counts in Hugging Face
/// <c>config.json</c> and onnxruntime-genai's <c>genai_config.json</c>, to cross-check the block count found in the
/// graph, the tokenizer's special ids (<see cref="Folder.HfModelMetadata"/>) and the <see cref="Hints"/> some graphs
/// do not carry; the graph's structure stays the authority for everything else.
/// </summary>
public sealed record SourceModelConfig(IReadOnlyList<(string Source, int Layers)> LayerCounts, int? BosId, int? EosId,
    SourceHints Hints)
{
    public const string HuggingFaceFile = "config.json", GenAiFile = "genai_config.json";

    public static SourceModelConfig Read(string directory)
    {
        var layers = new List<(string, int)>();
        var hf = Load(directory, HuggingFaceFile);
        if (hf is not null)
            foreach (var key in new[] { "n_layer", "num_hidden_layers" })
                if (Int(hf[key]) is { } n) layers.Add(($"{HuggingFaceFile} {key} = {n}", n));
        if (Load(directory, GenAiFile)?["model"] is JsonObject genai
            && Int(genai["decoder"]?["num_hidden_layers"]) is { } layerCount)
            layers.Add(($"{GenAiFile} model.decoder.num_hidden_layers = {layerCount}", layerCount));
        // A folder without any config still has its graph recognised first (the clearer error); its missing token
        // ids are refused after that.
        var metadata = Folder.HfModelMetadata.Files.Any(f => File.Exists(Path.Combine(directory, f)))
            ? Folder.HfModelMetadata.Read(directory) : new Folder.HfModelMetadata();
        var ropeTheta = hf?["rope_theta"] is JsonValue v && v.TryGetValue<double>(out var theta) ? (float)theta
            : (float?)null;
        return new SourceModelConfig(layers, metadata.BosId, metadata.EosIds.Count > 0 ? metadata.EosIds[0] : null,
            new SourceHints(metadata.ContextLength, ropeTheta));
    }

    /// <summary>Refuses a graph whose block count disagrees with any config beside it, naming both.</summary>
    public void CheckLayers(int blocksInGraph, string graphFile)
    {
        foreach (var (source, layers) in LayerCounts)
            if (layers != blocksInGraph)
                throw new InvalidDataException($"{graphFile} has {blocksInGraph} blocks along its residual stream, "
                    + $"but {source}");
    }

    private static JsonNode? Load(string directory, string file)
    {
        var path = Path.Combine(directory, file);
        if (!File.Exists(path)) return null;
        try { return JsonNode.Parse(File.ReadAllText(path)); }
        catch (JsonException e) { throw new InvalidDataException($"{path}: not valid JSON ({e.Message})", e); }
    }

    /// <summary>An id given as a number, or as a list of numbers (GenAI's eos_token_id), whose first is taken.</summary>
    private static int? Int(JsonNode? node) => node switch
    {
        JsonValue v when v.TryGetValue<int>(out var i) => i,
        JsonArray { Count: > 0 } a => Int(a[0]),
        _ => null,
    };
}
