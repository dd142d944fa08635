using FeatureFlow.Models.Hooking;
using FeatureFlow.Onnx;
using FeatureFlow.Onnx.Ir;
using DataType = FeatureFlow.Onnx.Ir.TensorProto.Types.DataType;

namespace FeatureFlow.Models.Tests.Hooking;

/// <summary>Graphs that are not what a family expects are refused with what was expected and found; nothing is written.</summary>
public sealed class RefusalTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("featureflow-hook-refusal-").FullName;

    public void Dispose() => Directory.Delete(_root, true);

    [Fact]
    public void A_torch_block_whose_attention_was_replaced_is_refused_naming_the_block_and_what_its_branch_holds()
    {
        var model = OnnxModelFile.Read(Path.Combine(RepoPaths.TorchTinyGpt2, "model.onnx"));
        var softmax = model.Graph.Node.Single(n => n.OpType == "Softmax" && n.Name.Contains("h.1", StringComparison.Ordinal));
        softmax.OpType = "Identity";
        softmax.Attribute.Clear();
        var error = Refused(SourceFolder(RepoPaths.TorchTinyGpt2, "model.onnx", model));
        Assert.Contains("blocks.1: expected attention (Softmax)", error);
        Assert.Contains("found", error);
        Assert.Contains("Gemm '/m/transformer/h.1/attn/c_proj/Gemm'", error);
    }

    [Fact]
    public void A_fused_block_without_its_attention_node_is_refused_naming_what_reads_the_norm_instead()
    {
        var model = OnnxModelFile.Read(Path.Combine(RepoPaths.GenAiTinyGpt2, "past.onnx"));
        var attention = model.Graph.Node.Single(n => n.Name == "GptAttention_2");
        var projection = model.Graph.Node.Single(n => n.Input.Contains(attention.Output[0]));
        projection.Input[0] = attention.Input[0];
        model.Graph.Node.Remove(attention);
        var error = Refused(SourceFolder(RepoPaths.GenAiTinyGpt2, "past.onnx", model));
        Assert.Contains("blocks.2: expected attention (com.microsoft Attention)", error);
        Assert.Contains("MatMul 'GptAttention_2_matmul'", error);
    }

    [Fact]
    public void An_arbitrary_small_graph_is_refused_listing_the_families_and_the_operators_found()
    {
        var g = new GraphBuilder("not-a-decoder");
        var x = g.Input("x", DataType.Float, 2);
        g.Output(g.Op("Relu", [g.Op("Add", [x, x])]), "y", DataType.Float, 2);
        var error = Refused(SourceFolder(RepoPaths.TorchTinyGpt2, "model.onnx", g.Build(new OnnxModelOptions())));
        Assert.Contains("unrecognised decoder graph", error);
        Assert.All(GraphHooker.Families, f => Assert.Contains(f.Name, error));
        Assert.Contains("Add ×1", error);
        Assert.Contains("Relu ×1", error);
    }

    [Fact]
    public void A_block_count_that_disagrees_with_config_json_is_refused_naming_both()
    {
        var dir = SourceFolder(RepoPaths.TorchTinyGpt2, "model.onnx", null);
        var config = Path.Combine(Path.GetDirectoryName(dir)!, "config.json");
        File.WriteAllText(config, File.ReadAllText(config).Replace("\"n_layer\": 2", "\"n_layer\": 3", StringComparison.Ordinal));
        var error = Refused(dir);
        Assert.Contains("model.onnx has 2 blocks along its residual stream, but config.json n_layer = 3", error);
    }

    [Fact]
    public void A_block_count_that_disagrees_with_genai_config_is_refused_naming_both()
    {
        var dir = SourceFolder(RepoPaths.GenAiTinyGpt2, "past.onnx", null);
        var config = Path.Combine(Path.GetDirectoryName(dir)!, "genai_config.json");
        File.WriteAllText(config, File.ReadAllText(config).Replace("\"num_hidden_layers\": 5", "\"num_hidden_layers\": 4", StringComparison.Ordinal));
        var error = Refused(dir);
        Assert.Contains("past.onnx has 5 blocks along its residual stream, but genai_config.json model.decoder.num_hidden_layers = 4", error);
    }

    [Fact]
    public void An_output_folder_that_already_holds_files_is_refused_and_left_alone()
    {
        var output = Path.Combine(_root, "out");
        Directory.CreateDirectory(output);
        File.WriteAllText(Path.Combine(output, "keep.txt"), "mine");
        var e = Assert.Throws<IOException>(() => HookedFolderWriter.Write(new HookRequest
        {
            InputGraph = Path.Combine(RepoPaths.TorchTinyGpt2, "model.onnx"), OutputDirectory = output,
        }));
        Assert.Contains("already exists and is not empty", e.Message);
        Assert.Equal(["keep.txt"], Directory.GetFiles(output).Select(Path.GetFileName));
    }

    [Fact]
    public void A_source_folder_that_holds_a_file_the_hooked_folder_writes_is_refused_naming_it()
    {
        var graph = SourceFolder(RepoPaths.TorchTinyGpt2, "model.onnx", null);
        File.Copy(graph, Path.Combine(Path.GetDirectoryName(graph)!, "decoder.onnx"));
        var error = Refused(graph);
        Assert.Contains("already holds a decoder.onnx, which the hooked folder writes itself", error);
    }

    /// <summary>A copy of a fixture folder with its graph replaced by <paramref name="graph"/> (null: unchanged).</summary>
    private string SourceFolder(string fixture, string graphFile, ModelProto? graph)
    {
        var dir = Path.Combine(_root, "source");
        Directory.CreateDirectory(dir);
        foreach (var file in Directory.GetFiles(fixture)) File.Copy(file, Path.Combine(dir, Path.GetFileName(file)));
        var path = Path.Combine(dir, graphFile);
        if (graph is not null) OnnxModelFile.Write(graph, path);
        return path;
    }

    /// <summary>Hooks <paramref name="graph"/>, expecting a refusal; checks that no output or staging folder was left.</summary>
    private string Refused(string graph)
    {
        var output = Path.Combine(_root, "hooked");
        var e = Assert.Throws<InvalidDataException>(() => HookedFolderWriter.Write(new HookRequest { InputGraph = graph, OutputDirectory = output }));
        Assert.False(Directory.Exists(output), "a refused hook left an output folder");
        Assert.DoesNotContain(Directory.GetDirectories(_root), d => d.Contains(".hooking-", StringComparison.Ordinal));
        return e.Message;
    }
}
