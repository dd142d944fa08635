using FeatureFlow.Models.Export;
using FeatureFlow.Models.Gemma2;

namespace FeatureFlow.Models.HuggingFace;

/// <summary>
/// Gemma2ForCausalLM: read by <see cref="Gemma2Checkpoint"/> (config values with no silent defaults, every tensor's
/// shape checked) and written by <see cref="Gemma2GraphExporter"/>.
/// </summary>
public sealed class HfGemma2 : IHfArchitecture
{
    public string Name => "Gemma2ForCausalLM";

    public HfModel Load(HfConfig config, HfCheckpoint checkpoint, Action<string> progress)
    {
        Gemma2Checkpoint gemma;
        try
        {
            gemma = Gemma2Checkpoint.Read(File.ReadAllText(config.Path),
                name => (checkpoint.Read(name, checkpoint.Shape(name)), checkpoint.Shape(name)), checkpoint.Directory);
        }
        catch (InvalidDataException e) when (!e.Message.StartsWith(checkpoint.Directory, StringComparison.Ordinal))
        {
            throw new InvalidDataException($"{config.Path}: {e.Message}", e);
        }
        var arch = gemma.Config.Architecture;
        checkpoint.RequireAllRead(Name, name => arch.TiedEmbeddings && name == "lm_head.weight");
        var (bos, eos) = HfArchitectures.TokenIds(config);
        progress($"read {checkpoint.TensorNames.Count} tensors from {checkpoint.Source}");
        return new HfModel(arch, bos, eos, "gemma2",
            (options, name, external) => Gemma2GraphExporter.Export(gemma.Config, gemma.Weights, options, name, external));
    }
}
