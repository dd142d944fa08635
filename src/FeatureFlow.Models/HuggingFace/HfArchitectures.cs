using FeatureFlow.Models.Export;
using FeatureFlow.Onnx;
using FeatureFlow.Onnx.Ir;

namespace FeatureFlow.Models.HuggingFace;

/// <summary>One Hugging Face model class the exporter can write: reads its config and weights into an
/// <see cref="HfModel"/>.</summary>
public interface IHfArchitecture
{
    /// <summary>The class name config.json's architectures[0] gives (e.g. "LlamaForCausalLM").</summary>
    string Name { get; }

    /// <summary>Checks the config (refusing what it cannot write exactly, by name) and reads the weights.</summary>
    HfModel Load(HfConfig config, HfCheckpoint checkpoint, Action<string> progress);
}

/// <summary>A loaded checkpoint: its architecture, token ids, the ONNX Runtime GenAI model type, and how to write
/// one graph of it (a hooks/KV-layout variant, into the folder's shared weights file if given).</summary>
public sealed record HfModel(ModelArchitecture Architecture, int BosId, int EosId, string GenAiType,
    Func<HookedGraphOptions, string, ExternalDataFile?, ModelProto> ExportGraph)
{
    /// <summary>The operators of the batched graphs the engine runs (fused where the exporter writes them).</summary>
    public OperatorSet BatchedOperators { get; init; } = OperatorSet.Plain;
}

/// <summary>The model classes `featureflow export --hf` writes, one exporter class each.</summary>
public static class HfArchitectures
{
    private static readonly IReadOnlyDictionary<string, IHfArchitecture> Known =
        new IHfArchitecture[] { new HfLlama(), new HfGpt2(), new HfGemma2() }.ToDictionary(a => a.Name, StringComparer.Ordinal);

    public static IEnumerable<string> Names => Known.Keys.Order(StringComparer.Ordinal);

    public static IHfArchitecture For(HfConfig config) =>
        Known.TryGetValue(config.Architecture, out var architecture)
            ? architecture
            : throw new InvalidDataException($"{config.Path}: architectures is ['{config.Architecture}']; the exporter "
                + $"writes {string.Join(", ", Names)}");

    /// <summary>bos/eos ids from config.json, else generation_config.json beside it (where newer checkpoints keep them).
    /// </summary>
    internal static (int Bos, int Eos) TokenIds(HfConfig config)
    {
        var generation = Path.Combine(Path.GetDirectoryName(config.Path)!, "generation_config.json");
        HfConfig? Fallback() => File.Exists(generation) ? HfConfig.ReadGeneration(generation) : null;
        int Id(string key) => config.TokenId(key) ?? Fallback()?.TokenId(key)
            ?? throw config.Missing(key, "a token id (in config.json or generation_config.json)");
        return (Id("bos_token_id"), Id("eos_token_id"));
    }
}
