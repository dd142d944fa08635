using System.Security.Cryptography;
using FeatureFlow.Models.Folder;
using FeatureFlow.Onnx;

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
