using System.Text.Json.Nodes;
using FeatureFlow.Models.Export;
using FeatureFlow.Models.Folder;
using FeatureFlow.Models.HuggingFace;
using FeatureFlow.Models.Llama2c;
using FeatureFlow.Onnx;
using FeatureFlow.Onnx.Ir;

namespace FeatureFlow.Models.Tests.HuggingFace;

/// <summary>
/// Rope scaling read from config.json must give the inverse frequencies of transformers' _compute_*_parameters
/// (modeling_rope_utils.py), transcribed below in double precision, and a few values worked out by hand from those
/// formulas (pinned). Kinds and keys it cannot reproduce are refused by name.
/// </summary>
public class HfRopeScalingTests : IDisposable
{
    private readonly TempFolder _temp = new();

    private (ModelArchitecture Arch, HfConfig Config) Read(int hidden, int heads, int maxPositions, double theta,
        JsonObject? ropeScaling)
    {
        var dir = _temp.Sub($"config-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "config.json"), new JsonObject
        {
            ["architectures"] = new JsonArray("LlamaForCausalLM"),
            ["rope_theta"] = theta,
            ["rope_scaling"] = ropeScaling,
        }.ToJsonString());
        var config = HfConfig.Read(dir);
        var (t, scaling) = HfRopeConfig.Read(config, maxPositions);
        var arch = new ModelArchitecture
        {
            Family = "llama", DModel = hidden, HiddenDim = 1, Layers = 1, Heads = heads, KvHeads = heads, VocabSize = 1,
            ContextLength = maxPositions, RotaryTheta = t, RopeScaling = scaling,
        };
        arch.Validate();
        return (arch, config);
    }

    private static double[] Default(int hs, double theta) =>
        Enumerable.Range(0, hs / 2).Select(i => 1 / Math.Pow(theta, 2.0 * i / hs)).ToArray();

    private static void AssertClose(IReadOnlyList<double> expected, float[] actual, string what)
    {
        Assert.Equal(expected.Count, actual.Length);
        for (var i = 0; i < actual.Length; i++)
            Assert.True(Math.Abs(actual[i] - expected[i]) <= 2e-6 * Math.Abs(expected[i]),
                $"{what}[{i}]: {actual[i]:R}, expected {expected[i]:R}");
    }

    [Fact]
    public void Linear_scaling_divides_every_frequency_by_the_factor()
    {
        var (arch, _) = Read(4096, 64, 8192, 10000, new JsonObject { ["type"] = "linear", ["factor"] = 4.0 });
        var actual = RotaryFrequencies.Inverse(arch);
        AssertClose(Default(64, 10000).Select(f => f / 4).ToArray(), actual, "linear");
        AssertClose([0.25, 3.33380358040831e-05], [actual[0], actual[31]], "linear (by hand)");
    }

    [Fact]
    public void Llama3_scaling_matches_transformers_formula_on_the_llama_3_1_config()
    {
        JsonObject scaling = new()
        {
            ["rope_type"] = "llama3", ["factor"] = 8.0, ["low_freq_factor"] = 1.0, ["high_freq_factor"] = 4.0,
            ["original_max_position_embeddings"] = 8192,
        };
        var (arch, _) = Read(4096, 32, 131072, 500000, scaling);
        var actual = RotaryFrequencies.Inverse(arch);
        // _compute_llama3_parameters: wavelengths under 8192/4 kept, over 8192/1 divided by 8, a ramp between.
        var expected = Default(128, 500000).Select(f =>
        {
            var wavelength = 2 * Math.PI / f;
            var scaled = wavelength > 8192 ? f / 8 : f;
            var smooth = (8192 / wavelength - 1) / (4 - 1);
            var medium = !(wavelength < 8192 / 4.0) && !(wavelength > 8192);
            return medium ? (1 - smooth) * scaled / 8 + smooth * scaled : scaled;
        }).ToArray();
        AssertClose(expected, actual, "llama3");
        AssertClose([1.0, 0.016560440080994446, 0.002166570763503359, 0.00017850781276799638, 3.068925988914511e-07],
            [actual[0], actual[20], actual[29], actual[34], actual[63]], "llama3 (by hand)");
    }

    [Fact]
    public void Yarn_scaling_matches_transformers_formula_and_its_attention_factor()
    {
        var (arch, _) = Read(2048, 32, 4096, 10000, new JsonObject { ["rope_type"] = "yarn", ["factor"] = 4.0 });
        var actual = RotaryFrequencies.Inverse(arch);
        // _compute_yarn_parameters with beta_fast 32, beta_slow 1 over original = max_position_embeddings 4096.
        double CorrectionDim(double rotations) => 64 * Math.Log(4096 / (rotations * 2 * Math.PI)) / (2 * Math.Log(10000));
        double low = Math.Max(Math.Floor(CorrectionDim(32)), 0), high = Math.Min(Math.Ceiling(CorrectionDim(1)), 63);
        var expected = Default(64, 10000).Select((f, i) =>
        {
            var extrapolationWeight = 1 - Math.Clamp((i - low) / (high - low), 0, 1);
            return f / 4 * (1 - extrapolationWeight) + f * extrapolationWeight;
        }).ToArray();
        AssertClose(expected, actual, "yarn");
        AssertClose([1.0, 0.056234132519034905, 0.006538461538461538, 0.000333380358040831],
            [actual[0], actual[10], actual[16], actual[23]], "yarn (by hand: ramp over dimensions 10..23)");
        Assert.Equal(1.138629436111989, RotaryFrequencies.AttentionFactor(arch), 6);

        // DeepSeek-style mscale / mscale_all_dim: attention factor get_mscale(40, 1) / get_mscale(40, 0.707).
        var (deepSeek, _) = Read(2048, 32, 163840, 10000, new JsonObject
        {
            ["type"] = "yarn", ["factor"] = 40.0, ["mscale"] = 1.0, ["mscale_all_dim"] = 0.707,
            ["original_max_position_embeddings"] = 4096, ["beta_fast"] = 32, ["beta_slow"] = 1,
        });
        Assert.Equal(1.0857263992561355, RotaryFrequencies.AttentionFactor(deepSeek), 6);
        Assert.Equal(4096, deepSeek.RopeScaling!.OriginalContextLength);
    }

    [Fact]
    public void Dynamic_scaling_keeps_the_unscaled_frequencies_within_the_context()
    {
        var (arch, _) = Read(4096, 32, 4096, 10000, new JsonObject { ["type"] = "dynamic", ["factor"] = 2.0 });
        AssertClose(Default(128, 10000), RotaryFrequencies.Inverse(arch), "dynamic");
    }

    [Fact]
    public void Transformers_5_rope_parameters_carry_the_base_and_the_scaling()
    {
        var dir = _temp.Sub("v5");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "config.json"), """
            {"architectures": ["LlamaForCausalLM"],
             "rope_parameters": {"rope_type": "linear", "rope_theta": 500000.0, "factor": 2.0}}
            """);
        var (theta, scaling) = HfRopeConfig.Read(HfConfig.Read(dir), 8192);
        Assert.Equal(500000f, theta);
        Assert.Equal(new RopeScaling { Kind = RopeScalingKind.Linear, Factor = 2 }, scaling);
    }

    public static TheoryData<string, string[]> Refusals() => new()
    {
        { """{"rope_type": "longrope", "factor": 4.0, "long_factor": [1], "short_factor": [1]}""",
            ["rope_scaling.rope_type", "longrope", "linear, dynamic, llama3, yarn"] },
        { """{"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}""",
            ["rope_scaling.low_freq_factor", "missing"] },
        { """{"rope_type": "linear", "factor": 2.0, "finetuned": true}""",
            ["rope_scaling.finetuned", "not understood", "linear"] },
        { """{"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5}""",
            ["partial_rotary_factor", "0.5", "1"] },
        { """{"factor": 2.0}""", ["rope_scaling.rope_type", "expected one of"] },
    };

    [Theory]
    [MemberData(nameof(Refusals))]
    public void Scaling_that_cannot_be_reproduced_exactly_is_refused_by_name(string ropeScaling, string[] expected)
    {
        var e = Assert.Throws<InvalidDataException>(() =>
            Read(4096, 32, 8192, 10000, JsonNode.Parse(ropeScaling)!.AsObject()));
        Assert.All(expected, part => Assert.Contains(part, e.Message));
        Assert.Contains("config.json", e.Message);
    }

    /// <summary>The frequencies and YaRN's factor reach the graphs: the exported inv_freq table and the query and
    /// key projections (the factor folded in) of a stories260K checkpoint with scaling.</summary>
    [Fact]
    public void Exported_graphs_carry_the_scaled_frequencies_and_the_yarn_factor()
    {
        var stories = Llama2cCheckpoint.Read(Path.Combine(RepoPaths.Stories260kModel, "stories260K.bin"));
        ModelProto ExportWith(string name, JsonObject? ropeScaling)
        {
            var writer = HfTestCheckpoints.Llama(stories, _temp.Sub(name));
            writer.Config["rope_scaling"] = ropeScaling;
            var manifest = ModelFolderExporter.ExportHuggingFace(new HuggingFaceExportRequest
            {
                CheckpointDirectory = writer.Write(), OutputDirectory = _temp.Sub("out-" + name),
            });
            Assert.Equal(ropeScaling?["rope_type"]?.GetValue<string>() ?? "none",
                manifest.Architecture.RopeScaling?.Kind.ToString().ToLowerInvariant() ?? "none");
            return OnnxModelFile.Read(Path.Combine(_temp.Sub("out-" + name), ModelFolderExporter.HookedGraphFile));
        }
        static float[] Initializer(ModelProto m, string name) => System.Runtime.InteropServices.MemoryMarshal
            .Cast<byte, float>(m.Graph.Initializer.Single(t => t.Name == name).RawData.Span).ToArray();

        var plain = ExportWith("none", null);
        var llama3 = ExportWith("llama3", new JsonObject
        {
            ["rope_type"] = "llama3", ["factor"] = 4.0, ["low_freq_factor"] = 1.0, ["high_freq_factor"] = 4.0,
            ["original_max_position_embeddings"] = 64,
        });
        var scaledArch = stories.Architecture with
        {
            RopeScaling = new RopeScaling
            {
                Kind = RopeScalingKind.Llama3, Factor = 4, LowFreqFactor = 1, HighFreqFactor = 4, OriginalContextLength = 64,
            },
        };
        var expected = RotaryFrequencies.Inverse(scaledArch);
        Assert.Equal(expected, Initializer(llama3, "rotary.inv_freq"));
        Assert.NotEqual(Initializer(plain, "rotary.inv_freq"), expected);

        var yarn = ExportWith("yarn", new JsonObject { ["rope_type"] = "yarn", ["factor"] = 4.0 });
        var factor = (float)(0.1 * Math.Log(4) + 1);
        foreach (var projection in new[] { "blocks.0.attn.W_Q", "blocks.4.attn.W_K" })
            Assert.Equal(Initializer(plain, projection).Select(v => v * factor), Initializer(yarn, projection));
        Assert.Equal(Initializer(plain, "blocks.0.attn.W_V"), Initializer(yarn, "blocks.0.attn.W_V"));
    }

    public void Dispose() => _temp.Dispose();
}
