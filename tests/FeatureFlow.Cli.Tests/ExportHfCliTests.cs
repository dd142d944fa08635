using System.Security.Cryptography;
using FeatureFlow.Models;
using FeatureFlow.Models.Folder;

namespace FeatureFlow.Cli.Tests;

public class ExportHfCliTests
{
    private static readonly ModelArchitecture Gpt2 = new()
    {
        Family = "gpt2", DModel = 32, HiddenDim = 128, Layers = 2, Heads = 4, KvHeads = 4, VocabSize = 64,
        ContextLength = 32, Norm = NormKind.LayerNorm, Mlp = MlpKind.Gelu, Positions = PositionEmbedding.Learned,
    };

    [Fact]
    public async Task Export_hf_writes_a_folder_that_opens_and_lists_every_site()
    {
        var temp = Directory.CreateTempSubdirectory("featureflow-export-hf-").FullName;
        try
        {
            var checkpoint = HfTestCheckpoints.Gpt2(Gpt2, HfTestCheckpoints.RandomGpt2(Gpt2, 3), Path.Combine(temp, "tiny-gpt2"))
                .Write(shards: 2);
            var output = Path.Combine(temp, "model");
            var (exit, stdout, stderr) = await CliRunner.Run("export", "--hf", checkpoint, "--out", output,
                "--external-data", "Always");
            Assert.True(exit == 0, stderr);
            Assert.Contains("reading GPT2LMHeadModel from model.safetensors.index.json", stdout);
            Assert.Contains("wrote decoder_hooked.onnx", stdout);
            Assert.Contains($"exported tiny-gpt2 to {output}", stdout);

            var folder = ModelFolder.Open(output);
            Assert.Equal(Site.All(Gpt2.Layers).Select(s => s.HookName), folder.Manifest.Steering.Sites);
            Assert.Equal(6, folder.Sites.Count);
            Assert.Equal(("hf", "tokenizer.json"), (folder.Manifest.Tokenizer.Format, folder.Manifest.Tokenizer.File));
            Assert.NotNull(folder.BatchedGraphPath);
            foreach (var (file, sha) in folder.Manifest.Files)
                Assert.Equal(sha, Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(Path.Combine(output, file)))));
            Assert.Contains(ModelFolderExporter.WeightsFile, folder.Manifest.Files.Keys);
            // Built beside --out and moved: no staging folder remains.
            Assert.Equal(["model", "tiny-gpt2"], Directory.GetDirectories(temp).Select(Path.GetFileName).Order());
        }
        finally
        {
            Directory.Delete(temp, recursive: true);
        }
    }

    [Theory]
    [InlineData("--hf needs --out", "export", "--hf", "checkpoint")]
    [InlineData("give either --checkpoint with --tokenizer (llama2.c) or --hf", "export", "--hf", "a", "--checkpoint", "b", "--out", "c")]
    [InlineData("give either --checkpoint with --tokenizer (llama2.c) or --hf", "export", "--out", "c")]
    [InlineData("--tokenizer is for llama2.c checkpoints", "export", "--hf", "a", "--tokenizer", "t", "--out", "c")]
    [InlineData("--checkpoint needs --tokenizer", "export", "--checkpoint", "b")]
    public void Export_source_options_are_checked_before_anything_runs(string error, params string[] args)
    {
        var parse = CliApp.Build(TextWriter.Null, TextWriter.Null).Parse(args);
        Assert.Contains(parse.Errors, e => e.Message.Contains(error, StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_bad_checkpoint_is_one_clear_line_and_exit_code_1()
    {
        var temp = Directory.CreateTempSubdirectory("featureflow-export-hf-").FullName;
        try
        {
            var (exit, _, stderr) = await CliRunner.Run("export", "--hf", temp, "--out", Path.Combine(temp, "out"));
            Assert.Equal(1, exit);
            Assert.StartsWith("featureflow: no Hugging Face checkpoint at", stderr);
            Assert.Contains("config.json is missing", stderr);
            Assert.Empty(Directory.GetFileSystemEntries(temp));
        }
        finally
        {
            Directory.Delete(temp, recursive: true);
        }
    }
}
