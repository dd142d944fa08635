using FeatureFlow.Models.Folder;
using FeatureFlow.Models.Formats;
using FeatureFlow.Models.HuggingFace;
using FeatureFlow.Models.Llama2c;
using FeatureFlow.Onnx;
using FeatureFlow.Onnx.Ir;

namespace FeatureFlow.Models.Tests.HuggingFace;

/// <summary>
/// stories260K written out as a Hugging Face LlamaForCausalLM checkpoint (q/k rows permuted as
/// convert_llama_weights_to_hf.py permutes them) and exported with --hf must be the llama2.c model again: the same
/// logits as the llama2.c export and run.c's greedy ids.
/// </summary>
public class HfLlamaExportTests : IDisposable
{
    private static readonly LoadedCheckpoint Stories = Llama2cCheckpoint.Read(
        Path.Combine(RepoPaths.Stories260kModel, "stories260K.bin"));
    private static readonly RunCCase OnceUponATime = RunCReference.Case("greedy_prompt_once_upon_a_time");
    private readonly TempFolder _temp = new();
    private ModelArchitecture Arch => Stories.Architecture;

    private ModelFolder Export(HfCheckpointWriter checkpoint, int shards, ExternalWeights external = ExternalWeights.Never)
    {
        var output = _temp.Sub("out-" + Path.GetFileName(checkpoint.Directory));
        ModelFolderExporter.ExportHuggingFace(new HuggingFaceExportRequest
        {
            CheckpointDirectory = checkpoint.Write(shards),
            OutputDirectory = output,
            ModelName = "stories260k",
            ExternalWeights = external,
        });
        return ModelFolder.Open(output);
    }

    [Fact]
    public void A_float32_checkpoint_exports_the_llama2c_graphs_byte_for_byte()
    {
        var folder = Export(HfTestCheckpoints.Llama(Stories, _temp.Sub("f32")), shards: 1);
        var shipped = ModelFolder.Open(RepoPaths.Stories260kModel);
        // Un-permuting q/k restores the llama2.c weights exactly, so the graphs are the committed ones.
        foreach (var file in new[] { ModelFolderExporter.HookedGraphFile, ModelFolderExporter.PlainGraphFile,
                     ModelFolderExporter.BatchedGraphFile, ModelFolderExporter.BatchedPlainGraphFile })
            Assert.True(File.ReadAllBytes(Path.Combine(folder.Directory, file))
                .AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(shipped.Directory, file))), $"{file} differs");
        Assert.Equal("hf", folder.Manifest.Tokenizer.Format);
        Assert.Equal((1, 2), (folder.Manifest.Tokenizer.BosId, folder.Manifest.Tokenizer.EosId));
        Assert.Equal(Arch with { Family = "llama" }, folder.Manifest.Architecture);
    }

    /// <summary>Shards, an untied lm_head and external weights change the files but not the model.</summary>
    [Fact]
    public void A_sharded_untied_checkpoint_with_external_weights_gives_the_llama2c_logits_and_run_c_ids()
    {
        var folder = Export(HfTestCheckpoints.Llama(Stories, _temp.Sub("sharded"), tied: false), shards: 3,
            ExternalWeights.Always);
        Assert.False(folder.Manifest.Architecture.TiedEmbeddings);
        AssertOneSharedCopyOfTheWeights(folder);

        var shipped = ModelFolder.Open(RepoPaths.Stories260kModel);
        foreach (var (mine, theirs) in new[] { (folder.PlainGraphPath, shipped.PlainGraphPath),
                     (folder.HookedGraphPath, shipped.HookedGraphPath) })
        {
            var follow = OnceUponATime.SampledIds[..12];
            var actual = GraphRuns.Concat(mine, Arch, OnceUponATime.PromptIds, follow);
            var expected = GraphRuns.Concat(theirs, Arch, OnceUponATime.PromptIds, follow);
            for (var step = 0; step < actual.Count; step++)
            {
                var rel = Numerics.RelativeL2(actual[step], expected[step]);
                Assert.True(rel <= 1e-4, $"{Path.GetFileName(mine)} step {step}: relative L2 {rel:E2}");
            }
        }
        foreach (var c in RunCReference.Cases)
            Assert.Equal(c.SampledIds, GraphRuns.GreedyConcat(folder.HookedGraphPath, Arch, c.PromptIds, c.SampledIds.Length));
        Assert.Equal(OnceUponATime.SampledIds,
            GraphRuns.GreedyBatched(folder, OnceUponATime.PromptIds, OnceUponATime.SampledIds.Length));
    }

    /// <summary>
    /// Every graph points into weights.data and holds no large tensor itself; a name has one place in the file
    /// whichever graph refers to it, and the file holds each tensor once (plus alignment padding).
    /// </summary>
    private static void AssertOneSharedCopyOfTheWeights(ModelFolder folder)
    {
        var placed = new Dictionary<string, (long Offset, long Length)>();
        foreach (var path in new[] { folder.HookedGraphPath, folder.PlainGraphPath, folder.BatchedGraphPath!,
                     folder.BatchedPlainGraphPath! })
            foreach (var t in OnnxModelFile.Read(path).Graph.Initializer)
            {
                if (t.DataLocation != TensorProto.Types.DataLocation.External)
                {
                    Assert.True(t.RawData.Length < ExternalDataFile.DefaultMinimumBytes, $"{t.Name} is inline");
                    continue;
                }
                var entry = t.ExternalData.ToDictionary(e => e.Key, e => e.Value);
                Assert.Equal(ModelFolderExporter.WeightsFile, entry["location"]);
                var here = (long.Parse(entry["offset"]), long.Parse(entry["length"]));
                Assert.Equal(placed.GetValueOrDefault(t.Name, here), here);
                placed[t.Name] = here;
            }
        Assert.Contains("lm_head.weight", placed.Keys);
        var distinct = placed.Values.Sum(p => p.Length);
        var file = new FileInfo(Path.Combine(folder.Directory, ModelFolderExporter.WeightsFile)).Length;
        Assert.InRange(file, distinct, distinct + placed.Count * (long)ExternalDataFile.Alignment);
    }

    public static TheoryData<SafeTensorsDType, int> HalfPrecisions() =>
        new() { { SafeTensorsDType.BF16, 2 }, { SafeTensorsDType.F16, 1 } };

    /// <summary>
    /// Half-precision checkpoints hold rounded weights: the export must equal the reference forward pass on exactly
    /// those weights (bf16 and f16 widen to float32 without loss).
    /// </summary>
    [Theory]
    [MemberData(nameof(HalfPrecisions))]
    public void A_half_precision_checkpoint_matches_the_reference_pass_on_its_rounded_weights(SafeTensorsDType dtype,
        int shards)
    {
        var writer = HfTestCheckpoints.Llama(Stories, _temp.Sub(dtype.ToString()));
        writer.DType = dtype;
        var folder = Export(writer, shards);
        var rounded = HfCheckpointWriter.RoundTrip(Stories, dtype);
        var reference = new ReferenceTransformer(rounded);
        var unrounded = new ReferenceTransformer(Stories);
        var prompt = OnceUponATime.PromptIds;
        var follow = OnceUponATime.SampledIds[..16];
        var steps = GraphRuns.Concat(folder.PlainGraphPath, Arch, prompt, follow);
        int[] tokens = [.. prompt, .. follow];
        var rounding = 0.0;
        for (var pos = 0; pos < tokens.Length; pos++)
        {
            var expected = reference.Forward(tokens[pos], pos);
            var actual = pos < prompt.Length
                ? steps[0].AsSpan(pos * Arch.VocabSize, Arch.VocabSize).ToArray()
                : steps[pos - prompt.Length + 1];
            var rel = Numerics.RelativeL2(actual, expected);
            Assert.True(rel <= 1e-4, $"{dtype} position {pos}: relative L2 {rel:E2}");
            rounding = Math.Max(rounding, Numerics.RelativeL2(expected, unrounded.Forward(tokens[pos], pos)));
        }
        // The rounding must show, or this test could not tell a half-precision read from a float32 one.
        Assert.True(rounding > 1e-4, $"{dtype} rounding moved the logits by only {rounding:E2}");
    }

    /// <summary>
    /// Float16 output: every graph fused and half precision inside, float32 at the boundary, no batched graphs; the
    /// engine serves it row by row with run.c's greedy tokens, and the hooked graph's steered logits stay within half
    /// precision of the float32 folder's.
    /// </summary>
    [Fact]
    public async Task A_float16_export_is_served_with_run_c_s_greedy_tokens_and_steers_like_float32()
    {
        var output = _temp.Sub("out-fp16");
        ModelFolderExporter.ExportHuggingFace(new HuggingFaceExportRequest
        {
            CheckpointDirectory = HfTestCheckpoints.Llama(Stories, _temp.Sub("fp16")).Write(1),
            OutputDirectory = output, ModelName = "stories260k-fp16", Precision = GraphPrecision.Float16,
            ExternalWeights = ExternalWeights.Always,
        });
        var folder = ModelFolder.Open(output);
        Assert.Null(folder.BatchedGraphPath);
        var shipped = ModelFolder.Open(RepoPaths.Stories260kModel);
        // One shared file of half-precision weights: about half the float32 checkpoint's bytes.
        var weights = new FileInfo(Path.Combine(output, ModelFolderExporter.WeightsFile)).Length;
        var float32 = new FileInfo(Path.Combine(shipped.Directory, "stories260K.bin")).Length;
        Assert.InRange(weights, 0.4 * float32, 0.6 * float32);

        var cpu = new Engine.EngineOptions { ExecutionProvider = Engine.ExecutionProviderPreference.Cpu };
        using (var engine = new Engine.GenerationEngine(folder, cpu))
        {
            Assert.IsType<Engine.ConcatModelRunner>(engine.Runner);
            var ids = new List<int>();
            await foreach (var u in engine.GenerateAsync(new Engine.GenerationRequest
            {
                PromptIds = OnceUponATime.PromptIds, MaxTokens = 24,
                Sampling = new Engine.SamplingOptions { Temperature = 0f },
            }))
                ids.AddRange(u.TokenIds);
            Assert.Equal(OnceUponATime.SampledIds[..24], ids);
        }

        using var half = new Engine.HookedDecoder(folder.HookedGraphPath, Arch, cpu);
        using var single = new Engine.HookedDecoder(shipped.HookedGraphPath, Arch, cpu);
        var steering = new Steering.SteeringTensors(single.SteeringShape!);
        Numerics.RandomVector(new Random(5), Arch.DModel, 1f).CopyTo(steering.AddAt(new Site(3, SiteKind.MlpOut)));
        using var boundHalf = half.Bind(steering);
        using var boundSingle = single.Bind(steering);
        using var halfState = half.NewState();
        using var singleState = single.NewState();
        var error = Numerics.RelativeL2(half.Forward(halfState, OnceUponATime.PromptIds, boundHalf),
            single.Forward(singleState, OnceUponATime.PromptIds, boundSingle));
        Assert.True(error is > 0 and < 1e-2, $"float16 vs float32 steered logits: relative L2 {error}");
    }

    private static readonly ModelArchitecture Gpt2Arch = new()
    {
        Family = "gpt2", DModel = 32, HiddenDim = 128, Layers = 2, Heads = 4, KvHeads = 4, VocabSize = 96,
        ContextLength = 64, Norm = NormKind.LayerNorm, Mlp = MlpKind.Gelu, Positions = PositionEmbedding.Learned,
    };

    [Fact]
    public void Float16_output_is_refused_for_an_architecture_without_fused_graphs()
    {
        var output = _temp.Sub("out-gpt2-fp16");
        var e = Assert.Throws<InvalidDataException>(() => ModelFolderExporter.ExportHuggingFace(new HuggingFaceExportRequest
        {
            CheckpointDirectory = HfTestCheckpoints.Gpt2(Gpt2Arch, HfTestCheckpoints.RandomGpt2(Gpt2Arch, seed: 3),
                _temp.Sub("gpt2")).Write(1),
            OutputDirectory = output, Precision = GraphPrecision.Float16,
        }));
        Assert.Contains("float16", e.Message);
        Assert.Contains("GPT2LMHeadModel", e.Message);
        Assert.False(Directory.Exists(output));
    }

    /// <summary>
    /// The writer's permutation must really be Hugging Face's rotate_half convention, or the round trip above would
    /// prove only that two permutations cancel: rotating the permuted rows' output with rotate_half pairs
    /// (i, i + hs/2) must equal rotating the original rows' output with interleaved pairs (2i, 2i+1), permuted.
    /// </summary>
    [Fact]
    public void The_test_permutation_turns_interleaved_rotary_into_rotate_half()
    {
        var rng = new Random(7);
        const int heads = 2, hs = 8, dIn = 5, position = 3;
        var w = Numerics.RandomVector(rng, heads * hs * dIn);
        var x = Numerics.RandomVector(rng, dIn);
        float[] Project(float[] m) => Enumerable.Range(0, heads * hs)
            .Select(r => Enumerable.Range(0, dIn).Sum(i => m[r * dIn + i] * x[i])).ToArray();
        float Angle(int pair) => position / MathF.Pow(10000f, 2f * pair / hs);
        var interleaved = Project(w);
        var half = Project(HfTestCheckpoints.Permute(w, heads, heads * hs, dIn));
        for (var h = 0; h < heads; h++)
            for (var j = 0; j < hs / 2; j++)
            {
                float c = MathF.Cos(Angle(j)), s = MathF.Sin(Angle(j));
                int e = h * hs + 2 * j, o = e + 1, a = h * hs + j, b = a + hs / 2;
                Assert.Equal(interleaved[e] * c - interleaved[o] * s, half[a] * c - half[b] * s, 1e-5f);
                Assert.Equal(interleaved[e] * s + interleaved[o] * c, half[b] * c + half[a] * s, 1e-5f);
            }
    }

    public void Dispose() => _temp.Dispose();
}
