using System.Text.Json;
using FeatureFlow.Engine;
using FeatureFlow.Models;
using FeatureFlow.Models.Folder;
using FeatureFlow.Models.Formats;
using FeatureFlow.Steering;

namespace FeatureFlow.Cli.Tests;

/// <summary>onnxruntime-genai's fused GPT-2 test model, hooked once by the CLI into a temporary folder.</summary>
public sealed class HookedGenAiFolder : IDisposable
{
    public string Root { get; } = Directory.CreateTempSubdirectory("featureflow-hooked-cli-").FullName;
    public string Folder => Path.Combine(Root, "tiny-gpt2-hooked");

    public HookedGenAiFolder()
    {
        var (exit, _, stderr) = CliRunner.Run("hook", "--in", Path.Combine(RepoPaths.GenAiTinyGpt2, "past.onnx"), "--out", Folder)
            .GetAwaiter().GetResult();
        if (exit != 0) throw new InvalidOperationException($"featureflow hook failed: {stderr}");
    }

    public void Dispose() => Directory.Delete(Root, true);
}

/// <summary>The commands that run a model folder work on a folder <c>featureflow hook</c> wrote.</summary>
public sealed class HookedFolderCliTests(HookedGenAiFolder f) : IClassFixture<HookedGenAiFolder>
{
    [Fact]
    public async Task Generate_local_with_prompt_ids_reproduces_onnxruntime_genai_expected_greedy_sequences()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(RepoPaths.GenAiTinyGpt2, "expected.json")));
        var greedy = doc.RootElement.GetProperty("greedy");
        var prompts = greedy.GetProperty("input_ids").EnumerateArray().ToArray();
        var expected = greedy.GetProperty("expected_sequences").EnumerateArray().ToArray();
        var maxLength = greedy.GetProperty("max_length").GetInt32();
        for (var row = 0; row < prompts.Length; row++)
        {
            var prompt = prompts[row].EnumerateArray().Select(e => e.GetInt32()).ToArray();
            var (exit, stdout, stderr) = await CliRunner.Run("generate", "--local", "--provider", "Cpu", "--model", f.Folder,
                "--prompt-ids", string.Join(",", prompt), "--max-tokens", $"{maxLength - prompt.Length}", "--temperature", "0", "--json");
            Assert.True(exit == 0, stderr);
            using var result = JsonDocument.Parse(stdout);
            var ids = result.RootElement.GetProperty("token_ids").EnumerateArray().Select(e => e.GetInt32());
            Assert.Equal(expected[row].EnumerateArray().Select(e => e.GetInt32()), prompt.Concat(ids));
        }
    }

    [Fact]
    public async Task Generate_with_the_genai_backend_is_refused_in_one_line_because_genai_config_describes_the_source_graph()
    {
        var (exit, _, stderr) = await CliRunner.Run("generate", "--local", "--backend", "genai", "--model", f.Folder,
            "--prompt-ids", "0,0,195,731", "--max-tokens", "2");
        Assert.Equal(1, exit);
        Assert.StartsWith("featureflow: --backend genai: decoder_hooked.onnx has featureflow's inputs and outputs, not those of "
            + "past.onnx that genai_config.json describes", stderr);
        Assert.Contains("use --backend featureflow", stderr);
    }

    /// <summary>
    /// Two 8-token stories from BOS: every site's activations are written, and they are the hooked graph's own site
    /// values for the tokens the corpus records (run again here as one prompt through <see cref="HookedDecoder"/>).
    /// </summary>
    [Fact]
    public async Task Collect_writes_an_activation_corpus_of_the_hooked_models_site_values()
    {
        var corpusDir = Path.Combine(f.Root, "corpus");
        var (exit, stdout, stderr) = await CliRunner.Run("collect", "--model", f.Folder, "--out", corpusDir, "--sequences", "2",
            "--length", "8", "--batch", "2", "--provider", "Cpu");
        Assert.True(exit == 0, stderr);
        Assert.Contains("wrote 16 tokens × 15 sites", stdout);
        var corpus = ActivationCorpus.Open(corpusDir);
        var folder = ModelFolder.Open(f.Folder);
        var arch = folder.Manifest.Architecture;
        Assert.Equal(folder.Manifest.Steering.Sites, corpus.Manifest.Sites);
        var tokens = corpus.ReadTokens();
        Assert.Equal([folder.Manifest.Tokenizer.BosId, folder.Manifest.Tokenizer.BosId], new[] { tokens[0], tokens[8] });

        var site = new Site(2, SiteKind.ResidPost);
        var collected = corpus.ReadSite(site);
        using var decoder = new HookedDecoder(folder.HookedGraphPath, arch, new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu });
        for (var row = 0; row < 2; row++)
        {
            using var state = decoder.NewState();
            using var identity = decoder.Bind(new SteeringTensors(decoder.SteeringShape!));
            var values = decoder.Run(state, tokens.AsSpan(row * 8, 8), identity, [site]).Sites[0];
            var expected = collected.AsSpan(row * 8 * arch.DModel, 8 * arch.DModel);
            Assert.True(Numerics.RelativeL2(values, expected) <= 1e-5, $"row {row}: collected {site} differs from the graph's");
        }
    }
}
