using System.Security.Cryptography;
using FeatureFlow.Models.Folder;
using FeatureFlow.Onnx;
using FeatureFlow.Onnx.CustomOps;

namespace FeatureFlow.Models.Tests;

public class ModelFolderTests
{
    [Fact]
    public void Shipped_folder_opens_and_every_file_matches_its_manifest_hash()
    {
        var folder = ModelFolder.Open(RepoPaths.Stories260kModel);
        Assert.Equal("stories260k", folder.Manifest.Name);
        Assert.Equal(15, folder.Sites.Count);
        foreach (var (file, sha) in folder.Manifest.Files)
            Assert.Equal(sha, Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(Path.Combine(folder.Directory, file)))));
    }

    [Fact]
    public void Graphs_use_genai_and_optimum_io_names()
    {
        var folder = ModelFolder.Open(RepoPaths.Stories260kModel);
        var plain = OnnxModelFile.Read(folder.PlainGraphPath).Graph;
        var hooked = OnnxModelFile.Read(folder.HookedGraphPath).Graph;
        string[] io = ["input_ids", "attention_mask", "position_ids", "past_key_values.0.key", "past_key_values.4.value"];
        Assert.All(io, n => Assert.Contains(plain.Input, i => i.Name == n));
        Assert.All(new[] { "logits", "present.0.key", "present.4.value" }, n => Assert.Contains(plain.Output, o => o.Name == n));
        Assert.DoesNotContain(plain.Input, i => i.Name.StartsWith("steering.", StringComparison.Ordinal));
        Assert.Equal(4, hooked.Input.Count(i => i.Name.StartsWith("steering.", StringComparison.Ordinal)));
        Assert.All(folder.Manifest.Steering.Sites, s => Assert.Contains(hooked.Output, o => o.Name == s));
    }

    [Fact]
    public void Re_export_reproduces_every_file_of_the_shipped_folder_byte_for_byte_including_the_batched_graphs()
    {
        var folder = ModelFolder.Open(RepoPaths.Stories260kModel);
        var outDir = Directory.CreateTempSubdirectory("featureflow-reexport-").FullName;
        try
        {
            var m = folder.Manifest;
            ModelFolderExporter.ExportLlama2c(new Llama2cExportRequest
            {
                CheckpointPath = Path.Combine(folder.Directory, m.Provenance.Checkpoint.File),
                TokenizerPath = folder.TokenizerPath,
                OutputDirectory = outDir,
                ModelName = m.Name,
                Hooks = new() { SlotsPerSite = m.Steering.SlotsPerSite, SiteOutputs = m.Steering.SiteOutputs },
                Description = m.Provenance.Description,
                License = m.Provenance.License,
            });
            var written = Directory.GetFiles(outDir).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToArray();
            Assert.Contains(ModelFolderExporter.BatchedGraphFile, written);
            Assert.Contains(ModelFolderExporter.BatchedPlainGraphFile, written);
            Assert.DoesNotContain("decoder_add_batched.onnx", written);
            Assert.Equal(m.Files.Keys.Append(ModelManifest.FileName).Order(StringComparer.Ordinal), written);
            foreach (var file in written)
            {
                var bytes = File.ReadAllBytes(Path.Combine(outDir, file!));
                Assert.True(bytes.AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(folder.Directory, file!))),
                    $"{file} differs from the committed one");
            }
        }
        finally
        {
            Directory.Delete(outDir, true);
        }
    }

    /// <summary>
    /// With external weights the four graphs point into one weights.data that holds each tensor once (the manifest
    /// hashes it), and exporting again over the folder reproduces every file.
    /// </summary>
    [Fact]
    public void A_llama2c_export_with_external_weights_shares_one_weights_file_and_re_exports_byte_for_byte()
    {
        var shipped = ModelFolder.Open(RepoPaths.Stories260kModel);
        var outDir = Directory.CreateTempSubdirectory("featureflow-external-").FullName;
        try
        {
            Dictionary<string, byte[]> Export()
            {
                ModelFolderExporter.ExportLlama2c(new Llama2cExportRequest
                {
                    CheckpointPath = Path.Combine(shipped.Directory, shipped.Manifest.Provenance.Checkpoint.File),
                    TokenizerPath = shipped.TokenizerPath, OutputDirectory = outDir, ModelName = "stories260k",
                    ExternalWeights = ExternalWeights.Always,
                });
                return Directory.GetFiles(outDir).ToDictionary(p => Path.GetFileName(p), File.ReadAllBytes);
            }
            var first = Export();
            var folder = ModelFolder.Open(outDir);
            Assert.Equal(Path.Combine(folder.Directory, ModelFolderExporter.WeightsFile), folder.WeightsPath);
            Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(first[ModelFolderExporter.WeightsFile])),
                folder.Manifest.Files[ModelFolderExporter.WeightsFile]);
            var placed = new Dictionary<string, (string Offset, string Length)>();
            foreach (var path in new[] { folder.HookedGraphPath, folder.PlainGraphPath, folder.BatchedGraphPath!,
                         folder.BatchedPlainGraphPath! })
                foreach (var t in OnnxModelFile.Read(path).Graph.Initializer)
                {
                    if (!ExternalData.IsExternal(t))
                    {
                        Assert.True(t.RawData.Length < ExternalDataFile.DefaultMinimumBytes, $"{t.Name} is inline");
                        continue;
                    }
                    var entry = t.ExternalData.ToDictionary(e => e.Key, e => e.Value);
                    Assert.Equal(ModelFolderExporter.WeightsFile, entry["location"]);
                    var here = (entry["offset"], entry["length"]);
                    Assert.Equal(placed.GetValueOrDefault(t.Name, here), here);
                    placed[t.Name] = here;
                }
            var distinct = placed.Values.Sum(p => long.Parse(p.Length));
            Assert.InRange(first[ModelFolderExporter.WeightsFile].LongLength, distinct,
                distinct + placed.Count * (long)ExternalDataFile.Alignment);

            var again = Export();
            Assert.Equal(first.Keys.Order(), again.Keys.Order());
            foreach (var (file, bytes) in first) Assert.True(bytes.AsSpan().SequenceEqual(again[file]), $"{file} differs");
        }
        finally
        {
            Directory.Delete(outDir, true);
        }
    }

    [Fact]
    public void Batched_graph_has_the_shared_kv_buffer_interface()
    {
        var folder = ModelFolder.Open(RepoPaths.Stories260kModel);
        Assert.Equal(Path.Combine(folder.Directory, ModelFolderExporter.BatchedGraphFile), folder.BatchedGraphPath);
        var model = OnnxModelFile.Read(folder.BatchedGraphPath!);
        Assert.Contains(model.OpsetImport, o => o.Domain == "com.microsoft" && o.Version == 1);
        var g = model.Graph;
        Assert.Equal(5, g.Node.Count(n => n.Domain == "com.microsoft" && n.OpType == "GroupQueryAttention"));
        static string Describe(Onnx.Ir.ValueInfoProto v)
        {
            var dims = v.Type.TensorType.Shape.Dim.Select(d => d.DimParam is { Length: > 0 } p ? p : d.DimValue.ToString());
            return $"{v.Name} {(Onnx.Ir.TensorProto.Types.DataType)v.Type.TensorType.ElemType} [{string.Join(",", dims)}]";
        }
        string[] inputs =
        [
            "input_ids Int64 [batch,sequence_length]",
            "position_ids Int64 [batch,sequence_length]",
            "seqlens_k Int32 [batch]",
            "total_sequence_length Int32 []",
            .. Enumerable.Range(0, 5).SelectMany(l => new[]
            {
                $"past_key_values.{l}.key Float [batch,4,max_sequence_length,8]",
                $"past_key_values.{l}.value Float [batch,4,max_sequence_length,8]",
            }),
            "steering.add Float [batch,15,64]",
            "steering.encoder Float [batch,15,64,8]",
            "steering.decoder Float [batch,15,8,64]",
            "steering.coefficients Float [batch,15,4,8]",
        ];
        Assert.Equal(inputs, g.Input.Select(Describe));
        string[] outputs =
        [
            .. Enumerable.Range(0, 5).SelectMany(l => new[]
            {
                $"present.{l}.key Float [batch,4,max_sequence_length,8]",
                $"present.{l}.value Float [batch,4,max_sequence_length,8]",
            }),
            "logits Float [batch,sequence_length,512]",
        ];
        Assert.Equal(outputs, g.Output.Select(Describe).Where(o => !o.StartsWith("blocks.", StringComparison.Ordinal)));
        Assert.All(folder.Manifest.Steering.Sites, s => Assert.Contains(g.Output, o => o.Name == s));
    }

    [Fact]
    public void Batched_graph_without_hooks_has_the_batched_interface_less_steering_and_site_outputs()
    {
        var folder = ModelFolder.Open(RepoPaths.Stories260kModel);
        Assert.Equal(Path.Combine(folder.Directory, ModelFolderExporter.BatchedPlainGraphFile),
            folder.BatchedPlainGraphPath);
        var hooked = OnnxModelFile.Read(folder.BatchedGraphPath!);
        var plain = OnnxModelFile.Read(folder.BatchedPlainGraphPath!);
        Assert.Contains(plain.OpsetImport, o => o.Domain == "com.microsoft" && o.Version == 1);
        Assert.Equal(5, plain.Graph.Node.Count(n => n.Domain == "com.microsoft" && n.OpType == "GroupQueryAttention"));
        // Same names, types and shapes, so the engine binds the same buffers to either graph.
        static string[] Describe(IEnumerable<Onnx.Ir.ValueInfoProto> values) =>
            values.Select(v => v.ToString()).ToArray();
        Assert.Equal(Describe(hooked.Graph.Input.Where(i => !i.Name.StartsWith("steering.", StringComparison.Ordinal))),
            Describe(plain.Graph.Input));
        Assert.Equal(Describe(hooked.Graph.Output.Where(o => !folder.Manifest.Steering.Sites.Contains(o.Name))),
            Describe(plain.Graph.Output));
        Assert.Contains(plain.MetadataProps, p => p.Key == "featureflow.hooks" && p.Value == "false");
        Assert.Contains(plain.MetadataProps, p => p.Key == "featureflow.kv_layout" && p.Value == "shared_buffer");
        // The hooks read the stacked steering inputs (nothing splits them), each with the norm after it in one node
        // that takes that norm's place: per block attn_out's SteeringHookNorm and mlp_out's and resid_post's
        // SteeringHookPairNorm. So the hooked graph has the hook-free graph's node count, less its ten skip norms.
        int Count(string opType) =>
            hooked.Graph.Node.Count(n => n.Domain == SteeringHookOp.Domain && n.OpType == opType);
        Assert.Equal(5, Count(SteeringHookOp.NormOpType));
        Assert.Equal(5, Count(SteeringHookOp.PairNormOpType));
        Assert.DoesNotContain(hooked.Graph.Node,
            n => n.OpType == "Split" && n.Input[0].StartsWith("steering.", StringComparison.Ordinal));
        Assert.Equal(10, plain.Graph.Node.Count(n => n.OpType == "SkipSimplifiedLayerNormalization"));
        Assert.DoesNotContain(hooked.Graph.Node, n => n.OpType == "SkipSimplifiedLayerNormalization");
        Assert.Equal(plain.Graph.Node.Count, hooked.Graph.Node.Count);
        Assert.Contains(hooked.OpsetImport, o => o.Domain == SteeringHookOp.Domain
            && o.Version == SteeringHookOp.DomainVersion);
        Assert.Contains(hooked.MetadataProps, p => p.Key == "featureflow.hook_form" && p.Value == "custom_operator");
        // The reference Concat graph keeps its hooks in ONNX operators (GenAI runs it, and the tests compare with it).
        var concat = OnnxModelFile.Read(folder.HookedGraphPath);
        Assert.DoesNotContain(concat.Graph.Node, n => n.Domain == SteeringHookOp.Domain);
        Assert.DoesNotContain(concat.OpsetImport, o => o.Domain == SteeringHookOp.Domain);
    }

    [Fact]
    public void A_folder_exported_before_the_batched_graph_without_hooks_still_opens()
    {
        var manifestPath = Path.Combine(RepoPaths.Stories260kModel, ModelManifest.FileName);
        var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(manifestPath))!;
        json["graphs"]!.AsObject().Remove("batched_plain");
        var dir = Directory.CreateTempSubdirectory().FullName;
        try
        {
            File.WriteAllText(Path.Combine(dir, ModelManifest.FileName), json.ToJsonString());
            // Open checks only that the files it needs exist.
            string[] files = [ModelFolderExporter.HookedGraphFile, ModelFolderExporter.BatchedGraphFile, "tok512.bin"];
            foreach (var file in files) File.WriteAllBytes(Path.Combine(dir, file), []);
            var folder = ModelFolder.Open(dir);
            Assert.Null(folder.Manifest.Graphs.BatchedPlain);
            Assert.Null(folder.BatchedPlainGraphPath);
            Assert.NotNull(folder.BatchedGraphPath);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public void A_folder_exported_before_the_batched_graph_still_opens()
    {
        var manifestPath = Path.Combine(RepoPaths.Stories260kModel, ModelManifest.FileName);
        var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(manifestPath))!;
        json["graphs"]!.AsObject().Remove("batched");
        json["graphs"]!.AsObject().Remove("batched_plain");
        var dir = Directory.CreateTempSubdirectory().FullName;
        try
        {
            File.WriteAllText(Path.Combine(dir, ModelManifest.FileName), json.ToJsonString());
            // Open checks only that the files it needs exist.
            foreach (var file in new[] { ModelFolderExporter.HookedGraphFile, "tok512.bin" })
                File.WriteAllBytes(Path.Combine(dir, file), []);
            var folder = ModelFolder.Open(dir);
            Assert.Null(folder.Manifest.Graphs.Batched);
            Assert.Null(folder.BatchedGraphPath);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    /// <summary>
    /// Folders exported while the engine had a third batched graph (add-only hooks) name it as graphs.batched_add: the
    /// entry is ignored, so such a folder opens, even without that file, and is served by its other batched graphs.
    /// </summary>
    [Fact]
    public void A_folder_exported_with_the_add_only_batched_graph_still_opens_and_ignores_it()
    {
        var manifestPath = Path.Combine(RepoPaths.Stories260kModel, ModelManifest.FileName);
        var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(manifestPath))!;
        json["graphs"]!.AsObject().Add("batched_add", "decoder_add_batched.onnx");
        var dir = Directory.CreateTempSubdirectory().FullName;
        try
        {
            File.WriteAllText(Path.Combine(dir, ModelManifest.FileName), json.ToJsonString());
            string[] files =
            [
                ModelFolderExporter.HookedGraphFile, ModelFolderExporter.BatchedGraphFile,
                ModelFolderExporter.BatchedPlainGraphFile, "tok512.bin",
            ];
            foreach (var file in files) File.WriteAllBytes(Path.Combine(dir, file), []);
            var folder = ModelFolder.Open(dir);
            Assert.Equal(ModelFolder.Open(RepoPaths.Stories260kModel).Manifest.Graphs, folder.Manifest.Graphs);
            Assert.DoesNotContain("batched_add", folder.Manifest.ToJson(), StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public void Genai_config_points_at_the_plain_graph()
    {
        var json = System.Text.Json.JsonDocument.Parse(File.ReadAllText(Path.Combine(RepoPaths.Stories260kModel, GenAiConfig.FileName)));
        var decoder = json.RootElement.GetProperty("model").GetProperty("decoder");
        Assert.Equal(ModelFolderExporter.PlainGraphFile, decoder.GetProperty("filename").GetString());
        Assert.Equal(4, decoder.GetProperty("num_key_value_heads").GetInt32());
    }

    [Fact]
    public void Missing_folder_says_how_to_create_one()
    {
        var e = Assert.Throws<FileNotFoundException>(() => ModelFolder.Open("/nonexistent/folder"));
        Assert.Contains("featureflow export", e.Message);
    }

    [Fact]
    public void Malformed_manifest_names_the_file()
    {
        var dir = Directory.CreateTempSubdirectory().FullName;
        File.WriteAllText(Path.Combine(dir, ModelManifest.FileName), "{ not json");
        var e = Assert.Throws<InvalidDataException>(() => ModelFolder.Open(dir));
        Assert.Contains(ModelManifest.FileName, e.Message);
        Directory.Delete(dir, true);
    }
}
