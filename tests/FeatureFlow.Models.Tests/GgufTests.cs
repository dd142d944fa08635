using FeatureFlow.Models.Formats;
using FeatureFlow.Models.Llama2c;
using FeatureFlow.Models.Tokenization;

namespace FeatureFlow.Models.Tests;

/// <summary>
/// GGUF writing and reading, and our Llama GGUF of stories260K held against the third-party stories260K.gguf
/// (llama.cpp's converter's output for the same weights). That llama.cpp runs ours as it runs theirs is shown in
/// FeatureFlow.LlamaCpp.Tests (LlamaGgufInteropTests).
/// </summary>
public sealed class GgufTests : IDisposable
{
    private static string CheckpointPath => Path.Combine(RepoPaths.Stories260kModel, "stories260K.bin");
    private static string TokenizerPath => Path.Combine(RepoPaths.Stories260kModel, "tok512.bin");
    private static string ThirdPartyPath => Path.Combine(RepoPaths.Stories260kFixtures, "stories260K.gguf");
    private readonly string _dir = Directory.CreateTempSubdirectory("featureflow-gguf-").FullName;

    public void Dispose() => Directory.Delete(_dir, true);

    [Fact]
    public void Metadata_of_each_written_type_and_tensors_read_back_at_aligned_offsets()
    {
        var path = Path.Combine(_dir, "t.gguf");
        float[] vector = [1f, -2f, 3.5f], matrix = [.. Enumerable.Range(0, 10).Select(i => i / 4f)];
        new GgufWriter()
            .String("general.name", "tëst")
            .UInt32("count", 7)
            .Float32("eps", 1e-5f)
            .Strings("words", ["a b"u8.ToArray(), []])
            .Float32s("scores", [0.5f, -1f])
            .Int32s("types", [1, 6, -3])
            .Tensor("v", vector, 3)
            .Tensor("m", matrix, 5, 2)
            .Write(path);

        var file = GgufFile.Open(path);
        Assert.Equal(3u, file.Version);
        Assert.Equal("tëst", file.Metadata["general.name"]);
        Assert.Equal(7u, file.Metadata["count"]);
        Assert.Equal(1e-5f, file.Metadata["eps"]);
        Assert.Equal(["a b", ""], (string[])file.Metadata["words"]);
        Assert.Equal([0.5f, -1f], (float[])file.Metadata["scores"]);
        Assert.Equal([1, 6, -3], (int[])file.Metadata["types"]);
        Assert.Equal(["v", "m"], file.Tensors.Select(t => t.Name));
        Assert.Equal([5L, 2L], file.Tensor("m").Dims);
        Assert.Equal(0, file.DataStart % GgufWriter.Alignment);
        Assert.Equal([0ul, 32ul], file.Tensors.Select(t => t.Offset)); // 12 bytes of v padded to 32
        Assert.Equal(vector, file.ReadFloat32(file.Tensor("v")));
        Assert.Equal(matrix, file.ReadFloat32(file.Tensor("m")));
        Assert.Equal(file.DataStart + 32 + 64, new FileInfo(path).Length); // 40 bytes of m padded to 64
        Assert.Equal([path], Directory.GetFiles(_dir)); // the temporary file is gone
    }

    [Fact]
    public void Duplicate_names_and_dimensions_that_do_not_fit_the_data_are_refused()
    {
        var writer = new GgufWriter().UInt32("k", 1).Tensor("t", new float[6], 3, 2);
        Assert.Contains("'k' is set twice", Assert.Throws<ArgumentException>(() => writer.UInt32("k", 2)).Message);
        Assert.Contains("'t' is added twice",
            Assert.Throws<ArgumentException>(() => writer.Tensor("t", new float[6], 6)).Message);
        Assert.Contains("hold 8 values, the data has 6",
            Assert.Throws<ArgumentException>(() => writer.Tensor("u", new float[6], 4, 2)).Message);
    }

    [Fact]
    public void A_file_that_is_not_gguf_or_is_cut_short_is_a_clear_error()
    {
        var path = Path.Combine(_dir, "bad.gguf");
        File.WriteAllBytes(path, "GGML0000"u8.ToArray());
        Assert.Contains("not a GGUF file", Assert.Throws<InvalidDataException>(() => GgufFile.Open(path)).Message);
        File.WriteAllBytes(path, File.ReadAllBytes(ThirdPartyPath)[..4000]);
        Assert.Contains("truncated", Assert.Throws<InvalidDataException>(() => GgufFile.Open(path)).Message);
    }

    /// <summary>
    /// llama2.c's weights need no reordering for llama.cpp (not even q and k, see <see cref="LlamaGguf"/>): every
    /// tensor of the third-party file is ours to the bit, under the same name, dimensions and type, and the
    /// vocabulary is the same tokens, scores and types. Two differences are by choice: the tied classifier is not
    /// stored twice, and the context length is llama2.c's seq_len (512), not the converter's 2048.
    /// </summary>
    [Fact]
    public void Our_stories260k_gguf_holds_the_third_party_files_tensors_and_vocabulary()
    {
        var path = Path.Combine(_dir, "stories260K.gguf");
        LlamaGguf.WriteLlama2c(CheckpointPath, TokenizerPath, path);
        var ours = GgufFile.Open(path);
        var theirs = GgufFile.Open(ThirdPartyPath);

        Assert.Equal(theirs.Tensors.Select(t => t.Name).Where(n => n != "output.weight").Order(),
            ours.Tensors.Select(t => t.Name).Order());
        foreach (var mine in ours.Tensors)
        {
            var their = theirs.Tensor(mine.Name);
            Assert.Equal(their.Dims, mine.Dims);
            Assert.Equal(their.Type, mine.Type);
            Assert.Equal(theirs.ReadFloat32(their), ours.ReadFloat32(mine));
        }
        Assert.Equal(theirs.ReadFloat32(theirs.Tensor("output.weight")),
            ours.ReadFloat32(ours.Tensor("token_embd.weight")));

        string[] same =
        [
            "general.architecture", "tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.scores",
            "tokenizer.ggml.token_type", "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.eos_token_id", "llama.embedding_length", "llama.feed_forward_length",
            "llama.attention.head_count", "llama.attention.head_count_kv", "llama.block_count",
            "llama.rope.dimension_count", "llama.attention.layer_norm_rms_epsilon",
        ];
        foreach (var key in same) Assert.Equal(theirs.Metadata[key], ours.Metadata[key]);
        Assert.Equal((2048u, 512u), (theirs.Metadata["llama.context_length"], ours.Metadata["llama.context_length"]));
        Assert.Equal(10000f, ours.Metadata["llama.rope.freq_base"]); // llama.cpp's default, which theirs relies on
        Assert.Equal("stories260K", ours.Metadata["general.name"]);
        Assert.Equal("▁the", ((string[])ours.Metadata["tokenizer.ggml.tokens"])[265]);
    }

    [Fact]
    public void A_model_llama_cpp_would_run_differently_is_refused_before_anything_is_written()
    {
        var checkpoint = Llama2cCheckpoint.Read(CheckpointPath);
        var tokenizer = Llama2cTokenizer.Load(TokenizerPath, 512);
        var path = Path.Combine(_dir, "refused.gguf");
        void Refused(ModelArchitecture a, Llama2cTokenizer t, string message) =>
            Assert.Contains(message, Assert.Throws<InvalidDataException>(
                () => LlamaGguf.Write(a, checkpoint.Weights, t, "x", path)).Message);

        var a = checkpoint.Architecture;
        Refused(a with { Rotary = RotaryConvention.Half }, tokenizer, "needs the Interleaved rotary convention");
        Refused(a with { Mlp = MlpKind.GeGlu }, tokenizer, "needs a SwiGlu MLP; found GeGlu");
        Refused(a with { Norm = NormKind.LayerNorm }, tokenizer, "needs RmsNorm; found LayerNorm");
        Refused(a, Llama2cTokenizer.Load(TokenizerPath, 300), "needs a tokenizer of the model's 512 tokens; found 300");
        Assert.Empty(Directory.GetFiles(_dir));
    }
}
