using FeatureFlow.Models.Folder;

namespace FeatureFlow.Cli.Tests;

public class HookCliTests
{
    [Fact]
    public async Task Hook_writes_a_model_folder_whose_manifest_lists_every_site_and_reports_each_stage()
    {
        var root = Directory.CreateTempSubdirectory("featureflow-hook-cli-").FullName;
        try
        {
            var outDir = Path.Combine(root, "tiny-gpt2-hooked");
            var (exit, stdout, stderr) = await CliRunner.Run("hook", "--in", Path.Combine(RepoPaths.GenAiTinyGpt2, "past.onnx"),
                "--out", outDir, "--slots", "4");
            Assert.True(exit == 0, stderr);
            foreach (var stage in new[] { "read past.onnx", "recognised onnxruntime-fused-gpt2: 5 blocks", "block count agrees with genai_config.json",
                         "raised ai.onnx opset 11 → 17", "split 10 fused nodes into plain operators",
                         "inserted 15 hooks (4 slots per site, site outputs)", "wrote decoder_hooked.onnx", "copied 5 files of the source folder: expected.json, genai_config.json, past.onnx, tokenizer.json",
                         "wrote featureflow.json", "blocks.4.hook_resid_post ←" })
                Assert.Contains(stage, stdout);
            var folder = ModelFolder.Open(outDir);
            Assert.Equal(Enumerable.Range(0, 5).SelectMany(l => new[] { $"blocks.{l}.hook_attn_out", $"blocks.{l}.hook_mlp_out", $"blocks.{l}.hook_resid_post" }),
                folder.Manifest.Steering.Sites);
            Assert.Equal(4, folder.Manifest.Steering.SlotsPerSite);
            Assert.Equal(15, folder.Manifest.Hooking!.Sites.Count);
        }
        finally
        {
            Directory.Delete(root, true);
        }
    }

    [Fact]
    public async Task Hook_refuses_a_graph_it_does_not_recognise_with_one_line_and_writes_nothing()
    {
        var root = Directory.CreateTempSubdirectory("featureflow-hook-cli-").FullName;
        try
        {
            var outDir = Path.Combine(root, "out");
            // decoder.onnx with no Softmax anywhere: no family's attention, so none claims it (as is, it is plain-llama's).
            var model = Onnx.OnnxModelFile.Read(Path.Combine(RepoPaths.Stories260kModel, "decoder.onnx"));
            foreach (var softmax in model.Graph.Node.Where(n => n.OpType == "Softmax"))
            {
                softmax.OpType = "Identity";
                softmax.Attribute.Clear();
            }
            var input = Path.Combine(root, "model.onnx");
            Onnx.OnnxModelFile.Write(model, input);
            var (exit, _, stderr) = await CliRunner.Run("hook", "--in", input, "--out", outDir);
            Assert.Equal(1, exit);
            Assert.StartsWith("featureflow: unrecognised decoder graph: expected one of", stderr);
            Assert.False(Directory.Exists(outDir));
        }
        finally
        {
            Directory.Delete(root, true);
        }
    }
}
