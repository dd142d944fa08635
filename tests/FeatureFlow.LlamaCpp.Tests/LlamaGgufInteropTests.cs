using FeatureFlow.Models.Formats;
using FeatureFlow.Models.Llama2c;
using LLama.Native;

namespace FeatureFlow.LlamaCpp.Tests;

/// <summary>llama.cpp twice: on our GGUF of stories260K (in a temp folder) and on the third-party one.</summary>
public sealed class OurGgufFixture : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("featureflow-llama-gguf-").FullName;

    public OurGgufFixture()
    {
        var path = Path.Combine(_dir, "stories260K.gguf");
        LlamaGguf.WriteLlama2c(CheckpointPath, Path.Combine(RepoPaths.Stories260kModel, "tok512.bin"), path);
        Ours = new LlamaCppPeer(path);
        ThirdParty = new LlamaCppPeer(Path.Combine(RepoPaths.Stories260kFixtures, "stories260K.gguf"));
    }

    public static string CheckpointPath => Path.Combine(RepoPaths.Stories260kModel, "stories260K.bin");
    public LlamaCppPeer Ours { get; }
    public LlamaCppPeer ThirdParty { get; }

    public void Dispose()
    {
        Ours.Dispose();
        ThirdParty.Dispose();
        Directory.Delete(_dir, true);
    }
}

/// <summary>
/// <see cref="LlamaGguf"/> proven by llama.cpp itself: on our GGUF it reproduces llama2.c run.c's greedy ids, the
/// ids and logits it gives on the third-party GGUF, our plain C# forward pass, and run.c's tokenization.
/// </summary>
public sealed class LlamaGgufInteropTests(OurGgufFixture fixture) : IClassFixture<OurGgufFixture>
{
    private readonly LlamaCppPeer _ours = fixture.Ours;
    private readonly LlamaCppPeer _theirs = fixture.ThirdParty;

    public static TheoryData<string> RunCCases => [.. RunCReference.Cases.Select(c => c.Name)];

    [Fact]
    public void Llama_cpp_reads_the_same_model_shape_and_vocabulary_from_both_files()
    {
        Assert.Equal((5, 64, 8, 4, 512),
            (_ours.Layers, _ours.EmbeddingSize, _ours.Heads, _ours.KvHeads, _ours.VocabSize));
        Assert.Equal((_theirs.Layers, _theirs.EmbeddingSize, _theirs.Heads, _theirs.KvHeads, _theirs.VocabSize),
            (_ours.Layers, _ours.EmbeddingSize, _ours.Heads, _ours.KvHeads, _ours.VocabSize));
        Assert.Equal((1, 2, true), (_ours.Bos, _ours.Eos, _ours.AddsBos));
        Assert.Equal((_theirs.Bos, _theirs.Eos, _theirs.AddsBos), (_ours.Bos, _ours.Eos, _ours.AddsBos));
        // NORM: adjacent channel pairs, llama2.c's rotary convention.
        Assert.Equal(LLamaRopeType.Norm, _ours.RopeType);
        Assert.Equal((_theirs.RopeType, _theirs.RopeFrequency), (_ours.RopeType, _ours.RopeFrequency));
        Assert.Equal(512, _ours.TrainedContext); // llama2.c's seq_len; the third-party converter wrote 2048
    }

    [Theory]
    [MemberData(nameof(RunCCases))]
    public void Llama_cpp_on_our_gguf_gives_run_c_greedy_ids_as_on_the_third_party_gguf(string name)
    {
        var c = RunCReference.Case(name);
        var ours = _ours.Greedy(c.PromptIds, c.SampledIds.Length);
        Assert.Equal(c.SampledIds, ours);
        Assert.Equal(_theirs.Greedy(c.PromptIds, c.SampledIds.Length), ours);
    }

    /// <summary>
    /// The same bytes in the same kernels: our file differs from theirs only in metadata and in leaving the tied
    /// classifier to token_embd, so llama.cpp's logits from the two agree to float32 rounding (they are in fact
    /// equal). The C# reference forward pass (plain loops, another summation order) agrees to 1e-4 on logits of
    /// magnitude up to ~22 (measured: 1.5e-5).
    /// </summary>
    [Fact]
    public void Logits_on_our_gguf_match_the_third_party_gguf_and_the_reference_forward_pass()
    {
        int[] ids = [1, .. RunCReference.Case("greedy_prompt_once_upon_a_time").GeneratedInOrder[..47]];
        var ours = _ours.Logits(ids);
        var theirs = _theirs.Logits(ids);
        var reference = new ReferenceTransformer(Llama2cCheckpoint.Read(OurGgufFixture.CheckpointPath));
        for (var pos = 0; pos < ids.Length; pos++)
        {
            Assert.Equal(512, ours[pos].Length);
            var expected = reference.Forward(ids[pos], pos);
            Assert.True(MaxDifference(theirs[pos], ours[pos]) <= 1e-5f,
                $"position {pos}: ours and the third-party file differ by {MaxDifference(theirs[pos], ours[pos])}");
            Assert.True(MaxDifference(expected, ours[pos]) <= 1e-4f,
                $"position {pos}: llama.cpp and the reference differ by {MaxDifference(expected, ours[pos])}");
        }
    }

    [Fact]
    public void Llama_cpp_tokenizes_text_with_our_vocabulary_as_run_c_encodes_it()
    {
        foreach (var (text, ids) in RunCReference.EncodeVectors())
        {
            Assert.Equal(ids, _ours.Tokenize(text));
            Assert.Equal(_theirs.Tokenize(text), _ours.Tokenize(text));
        }
    }

    private static float MaxDifference(float[] a, float[] b) => a.Zip(b, (x, y) => MathF.Abs(x - y)).Max();
}
