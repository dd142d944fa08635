using System.Text.Json.Nodes;
using FeatureFlow.Models.Folder;
using FeatureFlow.Models.Formats;
using FeatureFlow.Models.Llama2c;

namespace FeatureFlow.Models.Tests.HuggingFace;

/// <summary>
/// A checkpoint the exporter cannot write exactly is refused with a message naming what was expected and what was
/// found, and nothing is left in (or beside) --out.
/// </summary>
public class HfExportErrorTests : IDisposable
{
    private static readonly LoadedCheckpoint Stories = Llama2cCheckpoint.Read(
        Path.Combine(RepoPaths.Stories260kModel, "stories260K.bin"));
    private readonly TempFolder _temp = new();

    private sealed record BadCheckpoint(Action<HfCheckpointWriter> Change, int Shards = 1, Action<string>? AfterWrite = null);

    private static readonly Dictionary<string, BadCheckpoint> Cases = new()
    {
        ["unsupported architecture BertModel"] = new(w => w.Config["architectures"] = new JsonArray("BertModel")),
        ["unsupported architecture MistralForCausalLM"] =
            new(w => w.Config["architectures"] = new JsonArray("MistralForCausalLM")),
        ["hidden_act gelu"] = new(w => w.Config["hidden_act"] = "gelu"),
        ["attention biases"] = new(w => w.Config["attention_bias"] = true),
        ["missing shard"] = new(_ => { }, Shards: 2,
            AfterWrite: dir => File.Delete(Path.Combine(dir, "model-00002-of-00002.safetensors"))),
        ["I8 tensor"] = new(w => w.RawTensor("model.norm.weight", SafeTensorsDType.I8, [64], new byte[64])),
        ["F8_E4M3 tensor"] = new(w => w.RawTensor("model.layers.0.self_attn.q_proj.weight",
            SafeTensorsDType.F8_E4M3, [64, 64], new byte[64 * 64])),
        ["missing tensor"] = new(w => w.Remove("model.layers.3.mlp.up_proj.weight")),
        ["shape mismatch"] = new(w => w.Tensor("model.layers.0.self_attn.k_proj.weight", new float[64 * 64], 64, 64)),
        ["unannounced biases"] = new(w => w.Tensor("model.layers.2.self_attn.q_proj.bias", new float[64], 64)
            .Tensor("model.layers.2.self_attn.k_proj.bias", new float[32], 32)),
        ["no tokenizer.json"] = new(_ => { }, AfterWrite: dir => File.Delete(Path.Combine(dir, "tokenizer.json"))),
        ["no weights"] = new(_ => { }, AfterWrite: dir => File.Delete(Path.Combine(dir, "model.safetensors"))),
    };

    public static TheoryData<string, string[]> Refusals() => new()
    {
        { "unsupported architecture BertModel", ["architectures", "'BertModel'", "GPT2LMHeadModel, Gemma2ForCausalLM, LlamaForCausalLM"] },
        { "unsupported architecture MistralForCausalLM", ["'MistralForCausalLM'", "GPT2LMHeadModel, Gemma2ForCausalLM, LlamaForCausalLM"] },
        { "hidden_act gelu", ["config.json", "hidden_act is 'gelu'", "only 'silu'"] },
        { "attention biases", ["attention_bias is true", "only false"] },
        { "missing shard", ["shard 'model-00002-of-00002.safetensors'", "model.safetensors.index.json", "missing"] },
        { "I8 tensor", ["model.safetensors", "'model.norm.weight' is I8", "expected one of F32, F16, BF16"] },
        { "F8_E4M3 tensor", ["'model.layers.0.self_attn.q_proj.weight' is F8_E4M3", "F32, F16, BF16"] },
        { "missing tensor", ["no tensor 'model.layers.3.mlp.up_proj.weight'", "model.safetensors"] },
        { "shape mismatch", ["'model.layers.0.self_attn.k_proj.weight' has shape [64, 64]", "expected [32, 64]"] },
        { "unannounced biases", ["2 tensor(s) that a LlamaForCausalLM as config.json describes it does not have",
            "model.layers.2.self_attn.k_proj.bias, model.layers.2.self_attn.q_proj.bias"] },
        { "no tokenizer.json", ["expected tokenizer.json", "found no tokenizer files"] },
        { "no weights", ["expected model.safetensors or model.safetensors.index.json", "found: config.json"] },
    };

    [Theory]
    [MemberData(nameof(Refusals))]
    public void A_checkpoint_that_cannot_be_written_exactly_is_refused_by_name_and_leaves_nothing(string name,
        string[] expected)
    {
        var bad = Cases[name];
        var writer = HfTestCheckpoints.Llama(Stories, _temp.Sub("checkpoint"));
        bad.Change(writer);
        var checkpoint = writer.Write(bad.Shards);
        bad.AfterWrite?.Invoke(checkpoint);
        var e = Assert.ThrowsAny<Exception>(() => ModelFolderExporter.ExportHuggingFace(new HuggingFaceExportRequest
        {
            CheckpointDirectory = checkpoint, OutputDirectory = _temp.Sub("out"),
        }));
        Assert.True(e is InvalidDataException or FileNotFoundException, $"{e.GetType().Name}: {e.Message}");
        Assert.All(expected, part => Assert.Contains(part, e.Message));
        Assert.Equal(["checkpoint"], _temp.Entries());
    }

    [Fact]
    public void A_gpt2_activation_other_than_gelus_tanh_form_is_refused()
    {
        var arch = new ModelArchitecture
        {
            Family = "gpt2", DModel = 8, HiddenDim = 32, Layers = 1, Heads = 1, KvHeads = 1, VocabSize = 10,
            ContextLength = 8, Norm = NormKind.LayerNorm, Mlp = MlpKind.Gelu, Positions = PositionEmbedding.Learned,
        };
        var writer = HfTestCheckpoints.Gpt2(arch, HfTestCheckpoints.RandomGpt2(arch, 1), _temp.Sub("checkpoint"));
        writer.Config["activation_function"] = "gelu";
        var e = Assert.Throws<InvalidDataException>(() => ModelFolderExporter.ExportHuggingFace(new HuggingFaceExportRequest
        {
            CheckpointDirectory = writer.Write(), OutputDirectory = _temp.Sub("out"),
        }));
        Assert.Contains("activation_function is 'gelu'", e.Message);
        Assert.Contains("gelu_new or gelu_pytorch_tanh", e.Message);
        Assert.Equal(["checkpoint"], _temp.Entries());
    }

    [Fact]
    public void An_output_folder_that_already_holds_files_is_refused_and_left_as_it_was()
    {
        var checkpoint = HfTestCheckpoints.Llama(Stories, _temp.Sub("checkpoint")).Write();
        var output = _temp.Sub("out");
        Directory.CreateDirectory(output);
        File.WriteAllText(Path.Combine(output, "notes.txt"), "mine");
        var e = Assert.Throws<IOException>(() => ModelFolderExporter.ExportHuggingFace(new HuggingFaceExportRequest
        {
            CheckpointDirectory = checkpoint, OutputDirectory = output,
        }));
        Assert.Contains("already holds files", e.Message);
        Assert.Equal(["notes.txt"], Directory.GetFiles(output).Select(Path.GetFileName));
        Assert.Equal(["checkpoint", "out"], _temp.Entries());
    }

    public void Dispose() => _temp.Dispose();
}
