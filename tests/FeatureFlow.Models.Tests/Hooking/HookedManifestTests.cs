using System.Security.Cryptography;
using FeatureFlow.Models.Export;
using FeatureFlow.Models.Folder;
using FeatureFlow.Models.Hooking;
using FeatureFlow.Onnx;

namespace FeatureFlow.Models.Tests.Hooking;

/// <summary>The hooked folder's manifest describes the model, every site and the graph's own I/O; nothing else changes.</summary>
[Collection(HookedFixturesCollection.Name)]
public class HookedManifestTests(HookedFixtures fixtures)
{
    [Fact]
    public void Torch_folder_describes_a_two_block_gpt2_with_separate_int64_kv_io()
    {
        var m = fixtures.Torch.Folder.Manifest;
        var a = m.Architecture;
        Assert.Equal(("gpt2", 2, 8, 2, 2, 50257, 1024), (a.Family, a.DModel, a.HiddenDim, a.Layers, a.Heads, a.VocabSize, a.ContextLength));
        Assert.Equal((NormKind.LayerNorm, MlpKind.Gelu, PositionEmbedding.Learned), (a.Norm, a.Mlp, a.Positions));
        Assert.Equal(new TokenizerEntry("hf", "tokenizer.json", 50256, 50256), m.Tokenizer);
        Assert.Equal(new GraphEntry("decoder_hooked.onnx", "decoder.onnx"), m.Graphs);
        Assert.Equal("model.onnx", m.Hooking!.SourceGraph);
        Assert.Empty(m.Hooking.InterfaceChanges);
        var io = m.Hooking!.Io;
        Assert.Equal("torch-gpt2", m.Hooking.Family);
        Assert.Equal(("input_ids", "int64"), (io.InputIds.Name, io.InputIds.Type));
        Assert.Equal(("position_ids", "int64"), (io.PositionIds!.Name, io.PositionIds.Type));
        Assert.Equal(("attention_mask", "int64"), (io.AttentionMask!.Name, io.AttentionMask.Type));
        Assert.Equal(KvCacheIo.SeparatePacking, io.Kv.Packing);
        Assert.Equal(("past_key_values.%d.key", "past_key_values.%d.value", "present.%d.key", "present.%d.value"),
            (io.Kv.PastKey, io.Kv.PastValue, io.Kv.PresentKey, io.Kv.PresentValue));
        Assert.Equal((2, 1), (io.Kv.Heads, io.Kv.HeadSize));
        Assert.Equal(["batch", "2", "past_seq", "1"], io.Kv.PastShape);
        Assert.Empty(io.OtherInputs);
        Assert.Empty(m.Hooking.Rewrites);
        Assert.Null(m.Hooking.OpsetRaisedFrom);
    }

    [Fact]
    public void GenAi_folder_describes_a_five_block_gpt2_with_packed_int32_kv_io()
    {
        var m = fixtures.GenAi.Folder.Manifest;
        var a = m.Architecture;
        Assert.Equal(("gpt2", 32, 128, 5, 4, 1000, 512), (a.Family, a.DModel, a.HiddenDim, a.Layers, a.Heads, a.VocabSize, a.ContextLength));
        Assert.Equal(new TokenizerEntry("hf", "tokenizer.json", 98, 98), m.Tokenizer);
        Assert.Equal(new GraphEntry("decoder_hooked.onnx", "decoder.onnx"), m.Graphs);
        Assert.Equal("past.onnx", m.Hooking!.SourceGraph);
        var io = m.Hooking!.Io;
        Assert.Equal(("input_ids", "int32"), (io.InputIds.Name, io.InputIds.Type));
        Assert.Equal("int32", io.AttentionMask!.Type);
        Assert.Equal(KvCacheIo.PackedPacking, io.Kv.Packing);
        Assert.Equal(("past_%d", "present_%d"), (io.Kv.Past, io.Kv.Present));
        Assert.Equal(["2", "batch_size", "4", "past_seq_len", "8"], io.Kv.PastShape);
        Assert.Equal((4, 8), (io.Kv.Heads, io.Kv.HeadSize));
        Assert.Equal(
        [
            "input_ids, position_ids, attention_mask: int64 inputs Cast to the graph's int32",
            "past_%d: packed [2, batch, heads, past, head_size] stacked from inputs past_key_values.%d.key and .value "
                + "(Unsqueeze, Concat on axis 0)",
            "present_%d: split into outputs present.%d.key and .value (Gather on axis 0, index 0 and 1)",
        ], m.Hooking.InterfaceChanges);
    }

    public static TheoryData<string> Families => new() { "torch", "genai" };

    [Theory]
    [MemberData(nameof(Families))]
    public void Every_site_is_listed_in_order_found_in_the_graph_and_exposed_as_an_output(string family)
    {
        var model = fixtures[family];
        var m = model.Folder.Manifest;
        var names = Site.All(m.Architecture.Layers).Select(s => s.HookName).ToArray();
        Assert.Equal(names, m.Steering.Sites);
        Assert.Equal(names, m.Hooking!.Sites.Select(s => s.Site));
        var graph = OnnxModelFile.Read(model.Folder.HookedGraphPath).Graph;
        var values = graph.Node.SelectMany(n => n.Output).ToHashSet();
        Assert.All(m.Hooking.Sites, s => Assert.Contains(s.Value, values));
        Assert.Equal(names, graph.Output.Select(o => o.Name).Where(n => n.StartsWith("blocks.", StringComparison.Ordinal)));
        Assert.Equal([GraphNames.SteeringAdd, GraphNames.SteeringEncoder, GraphNames.SteeringDecoder, GraphNames.SteeringCoefficients],
            graph.Input.Select(i => i.Name).Where(n => n.StartsWith("steering.", StringComparison.Ordinal)));
        Assert.Equal(3 * m.Architecture.Layers, graph.Node.Count(n => n.Name.EndsWith("hook_attn_out/Squeeze_node", StringComparison.Ordinal)
            || n.Name.EndsWith("hook_mlp_out/Squeeze_node", StringComparison.Ordinal) || n.Name.EndsWith("hook_resid_post/Squeeze_node", StringComparison.Ordinal)));
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void The_folder_holds_the_source_graph_unchanged_and_a_copy_of_every_source_file_with_its_hash(string family)
    {
        var model = fixtures[family];
        var m = model.Folder.Manifest;
        var source = Path.GetDirectoryName(model.SourceGraph)!;
        var expected = Directory.GetFiles(source).Select(Path.GetFileName).Append("decoder_hooked.onnx").Append("decoder.onnx")
            .Order(StringComparer.Ordinal);
        Assert.Equal(expected, m.Files.Keys.Order(StringComparer.Ordinal));
        foreach (var (file, sha) in m.Files)
            Assert.Equal(sha, Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(Path.Combine(model.Folder.Directory, file)))));
        var kept = Path.Combine(model.Folder.Directory, m.Hooking!.SourceGraph);
        Assert.True(File.ReadAllBytes(kept).AsSpan().SequenceEqual(File.ReadAllBytes(model.SourceGraph)));
        Assert.Equal(new SourceFile(m.Hooking.SourceGraph, m.Files[m.Hooking.SourceGraph]), m.Provenance.Checkpoint);
    }

    /// <summary>The torch export already has our interface: its plain graph is the source graph, node for node.</summary>
    [Fact]
    public void A_source_graph_already_on_our_interface_is_the_folders_plain_graph_unchanged()
    {
        var model = fixtures.Torch;
        Assert.Equal(OnnxModelFile.Read(model.SourceGraph), OnnxModelFile.Read(model.Folder.PlainGraphPath));
    }

    [Fact]
    public void Manifests_without_a_hooking_section_keep_their_exact_json()
    {
        var path = Path.Combine(RepoPaths.Stories260kModel, ModelManifest.FileName);
        var json = File.ReadAllText(path);
        var manifest = ModelManifest.Parse(json, path);
        Assert.Null(manifest.Hooking);
        // Parsing sorts the file hashes with the default comparer; the exporter writes them in ordinal order.
        Assert.Equal(json, (manifest with { Files = new(manifest.Files, StringComparer.Ordinal) }).ToJson());
        Assert.DoesNotContain("hooking", json, StringComparison.Ordinal);
    }

    [Fact]
    public void The_hooking_section_survives_a_json_round_trip()
    {
        var m = fixtures.GenAi.Folder.Manifest;
        var again = ModelManifest.Parse(m.ToJson(), "roundtrip");
        Assert.Equal(m.ToJson(), again.ToJson());
        Assert.Equal("past_3", again.Hooking!.Io.Kv.PastName(3, value: false));
    }
}
