using System.Text.Json;

namespace FeatureFlow.Cli.Tests;

/// <summary>The offline verbs against the shipped SAEs and flow map (no corpus needed).</summary>
public sealed class PipelineCliTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("featureflow-cli-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    [Fact]
    public async Task Flow_explain_json_has_the_documented_shape()
    {
        var (exit, stdout, stderr) = await CliRunner.Run("flow", "explain", "3/res/17", "--json", "--model", RepoPaths.Stories260kModel);
        Assert.True(exit == 0, stderr);
        var json = JsonDocument.Parse(stdout).RootElement;
        Assert.Equal("blocks.3.hook_resid_post/17", json.GetProperty("feature").GetString());
        Assert.StartsWith("blocks.2.hook_resid_post/", json.GetProperty("resid").GetProperty("feature").GetString());
        Assert.StartsWith("blocks.3.hook_mlp_out/", json.GetProperty("mlp").GetProperty("feature").GetString());
        Assert.StartsWith("blocks.3.hook_attn_out/", json.GetProperty("attn").GetProperty("feature").GetString());
        Assert.InRange(json.GetProperty("mlp").GetProperty("score").GetDouble(), -1, 1);
        Assert.Contains(json.GetProperty("category").GetString(), new[] { "translated", "processed", "newborn", "unexplained" });
    }

    [Fact]
    public async Task Flow_graph_writes_json_dot_and_svg()
    {
        var (exit, _, stderr) = await CliRunner.Run("flow", "graph", "blocks.2.hook_resid_post/5", "--out", _dir, "--model", RepoPaths.Stories260kModel);
        Assert.True(exit == 0, stderr);
        var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(_dir, "2_res_5.json"))).RootElement;
        Assert.Equal("blocks.2.hook_resid_post/5", json.GetProperty("seed").GetString());
        Assert.StartsWith("digraph", File.ReadAllText(Path.Combine(_dir, "2_res_5.dot")));
        Assert.StartsWith("<svg", File.ReadAllText(Path.Combine(_dir, "2_res_5.svg")));
    }

    [Fact]
    public async Task Steer_build_then_gguf_export_and_import_round_trip()
    {
        var (exit, stdout, stderr) = await CliRunner.Run("steer", "build", "--name", "t", "--seed", "2/res/5", "--value", "3", "--packs", _dir, "--model", RepoPaths.Stories260kModel);
        Assert.True(exit == 0, stderr);
        Assert.Contains("wrote", stdout);
        Assert.True(File.Exists(Path.Combine(_dir, "t.pack.safetensors")));
        Assert.True(File.Exists(Path.Combine(_dir, "t.svg")));
        var gguf = Path.Combine(_dir, "t.gguf");
        (exit, _, stderr) = await CliRunner.Run("steer", "export-gguf", "t", "--out", gguf, "--packs", _dir, "--model", RepoPaths.Stories260kModel);
        Assert.True(exit == 0, stderr);
        (exit, stdout, stderr) = await CliRunner.Run("steer", "import-gguf", gguf, "--name", "back", "--packs", _dir, "--model", RepoPaths.Stories260kModel);
        Assert.True(exit == 0, stderr);
        Assert.Contains("imported", stdout);
    }

    [Theory]
    [InlineData("flow explain 2/res/9999", "features 0..511")]
    [InlineData("flow explain 2/mlp/3", "residual features")]
    [InlineData("flow explain banana", "is not a feature")]
    [InlineData("sae top 2/res/3 --corpus /nonexistent/corpus", "featureflow collect")]
    [InlineData("steer export-gguf nope --out /tmp/x.gguf", "nope.pack.safetensors")]
    public async Task Bad_input_is_one_clear_line_and_exit_code_1(string args, string expected)
    {
        var (exit, _, stderr) = await CliRunner.Run([.. args.Split(' '), "--model", RepoPaths.Stories260kModel]);
        Assert.Equal(1, exit);
        Assert.Contains(expected, stderr);
    }
}
