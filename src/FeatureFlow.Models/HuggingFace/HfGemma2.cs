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
        // Gemma2Checkpoint checks every shape against the config itself, naming the checkpoint folder in its errors.
        var gemma = Gemma2Checkpoint.Read(File.ReadAllText(config.Path), name =>
        {
            var shape = checkpoint.Shape(name);
            return (checkpoint.Read(name, shape), shape);
        }, checkpoint.Directory);
        var arch = gemma.Config.Architecture;
        checkpoint.RequireAllRead(Name, name => arch.TiedEmbeddings && name == "lm_head.weight");
        var (bos, eos) = HfArchitectures.TokenIds(config);
        progress($"read {checkpoint.TensorNames.Count} tensors from {checkpoint.Source}");
        return new HfModel(arch, bos, eos, "gemma2",
            (options, name, external) => Gemma2GraphExporter.Export(gemma.Config, gemma.Weights, options, name, external));
    }
}
