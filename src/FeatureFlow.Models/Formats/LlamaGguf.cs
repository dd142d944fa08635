using System.Text;
using FeatureFlow.Models.Llama2c;
using FeatureFlow.Models.Tokenization;

namespace FeatureFlow.Models.Formats;

/// <summary>
/// A Llama model as a GGUF that llama.cpp runs: architecture "llama", F32 tensors, and the llama2.c tokenizer as
/// llama.cpp's SentencePiece-style "llama" vocabulary. The keys, tensor names and token conventions are those of
/// llama.cpp's own llama2.c converter (convert-llama2c-to-ggml), as the shipped third-party stories260K.gguf shows.
/// </summary>
/// <remarks>
/// Weights go in unchanged. A row-major [out][in] matrix is ggml dimensions (in, out), the same bytes. Queries and
/// keys need no permutation: llama.cpp runs "llama" with its NORM rotary embedding, which rotates adjacent channel
/// pairs (2i, 2i+1), llama2.c's interleaved convention (Hugging Face converters permute q/k because their weights
/// pair i with i + head_size/2). A tied classifier is not written twice: without output.weight llama.cpp uses
/// token_embd.weight for the logits.
/// </remarks>
public static class LlamaGguf
{
    /// <summary>llama2.c's tokenizers keep &lt;unk&gt; at id 0 (run.c has no name for it).</summary>
    private const int UnknownId = 0;

    /// <summary>llama.cpp's token types (llama_token_type), as tokenizer.ggml.token_type stores them.</summary>
    private enum TokenType { Normal = 1, Unknown = 2, Control = 3, Byte = 6 }

    /// <summary>Reads a llama2.c checkpoint and its tokenizer and writes them as one GGUF, named after the checkpoint.
    /// </summary>
    public static void WriteLlama2c(string checkpointPath, string tokenizerPath, string outputPath)
    {
        var checkpoint = Llama2cCheckpoint.Read(checkpointPath);
        var tokenizer = Llama2cTokenizer.Load(tokenizerPath, checkpoint.Architecture.VocabSize);
        Write(checkpoint.Architecture, checkpoint.Weights, tokenizer,
            Path.GetFileNameWithoutExtension(checkpointPath), outputPath);
    }

    public static void Write(ModelArchitecture architecture, LlamaWeights weights, Llama2cTokenizer tokenizer,
        string name, string path)
    {
        Validate(architecture, tokenizer);
        var a = architecture;
        var gguf = new GgufWriter()
            .String("general.architecture", "llama")
            .String("general.name", name)
            .UInt32("llama.context_length", (uint)a.ContextLength)
            .UInt32("llama.embedding_length", (uint)a.DModel)
            .UInt32("llama.feed_forward_length", (uint)a.HiddenDim)
            .UInt32("llama.block_count", (uint)a.Layers)
            .UInt32("llama.attention.head_count", (uint)a.Heads)
            .UInt32("llama.attention.head_count_kv", (uint)a.KvHeads)
            .UInt32("llama.rope.dimension_count", (uint)a.HeadSize)
            .Float32("llama.rope.freq_base", a.RotaryTheta)
            .Float32("llama.attention.layer_norm_rms_epsilon", a.NormEpsilon);
        WriteVocabulary(gguf, tokenizer);

        long d = a.DModel, kv = a.KvDim, hidden = a.HiddenDim, vocab = a.VocabSize;
        gguf.Tensor("token_embd.weight", weights.TokenEmbedding, d, vocab)
            .Tensor("output_norm.weight", weights.RmsFinal, d);
        if (!a.TiedEmbeddings) gguf.Tensor("output.weight", weights.Classifier, d, vocab);
        for (var l = 0; l < a.Layers; l++)
        {
            gguf.Tensor($"blk.{l}.attn_norm.weight", weights.RmsAttention[l], d)
                .Tensor($"blk.{l}.attn_q.weight", weights.Wq[l], d, d)
                .Tensor($"blk.{l}.attn_k.weight", weights.Wk[l], d, kv)
                .Tensor($"blk.{l}.attn_v.weight", weights.Wv[l], d, kv)
                .Tensor($"blk.{l}.attn_output.weight", weights.Wo[l], d, d)
                .Tensor($"blk.{l}.ffn_norm.weight", weights.RmsFfn[l], d)
                .Tensor($"blk.{l}.ffn_gate.weight", weights.W1[l], d, hidden)
                .Tensor($"blk.{l}.ffn_down.weight", weights.W2[l], hidden, d)
                .Tensor($"blk.{l}.ffn_up.weight", weights.W3[l], d, hidden);
        }
        gguf.Write(path);
    }

    /// <summary>
    /// llama.cpp's "llama" vocabulary spells a space as U+2581 (SentencePiece's ▁), names the three special tokens
    /// &lt;unk&gt;, &lt;s&gt;, &lt;/s&gt; (llama2.c stores BOS and EOS as "\n&lt;s&gt;\n" and "\n&lt;/s&gt;\n") and
    /// types each token; the scores are run.c's merge scores.
    /// </summary>
    private static void WriteVocabulary(GgufWriter gguf, Llama2cTokenizer tokenizer)
    {
        var ids = Enumerable.Range(0, tokenizer.VocabSize).ToArray();
        gguf.String("tokenizer.ggml.model", "llama")
            .Strings("tokenizer.ggml.tokens", ids.Select(id => TokenText(tokenizer, id)).ToArray())
            .Float32s("tokenizer.ggml.scores", ids.Select(tokenizer.Score).ToArray())
            .Int32s("tokenizer.ggml.token_type", ids.Select(id => (int)TypeOf(tokenizer, id)).ToArray())
            .UInt32("tokenizer.ggml.unknown_token_id", UnknownId)
            .UInt32("tokenizer.ggml.bos_token_id", (uint)tokenizer.BosId)
            .UInt32("tokenizer.ggml.eos_token_id", (uint)tokenizer.EosId);
    }

    private static byte[] TokenText(Llama2cTokenizer tokenizer, int id) =>
        id == UnknownId ? "<unk>"u8.ToArray()
        : id == tokenizer.BosId ? "<s>"u8.ToArray()
        : id == tokenizer.EosId ? "</s>"u8.ToArray()
        : EscapeSpaces(tokenizer.RawPiece(id));

    private static byte[] EscapeSpaces(ReadOnlySpan<byte> piece)
    {
        var escaped = new List<byte>(piece.Length + 2);
        foreach (var b in piece)
        {
            if (b == (byte)' ') escaped.AddRange("\u2581"u8);
            else escaped.Add(b);
        }
        return escaped.ToArray();
    }

    private static TokenType TypeOf(Llama2cTokenizer tokenizer, int id) =>
        id == UnknownId ? TokenType.Unknown
        : id == tokenizer.BosId || id == tokenizer.EosId || tokenizer.RawPiece(id).IsEmpty ? TokenType.Control
        : tokenizer.IsByteFallback(id) ? TokenType.Byte
        : TokenType.Normal;

    /// <summary>Everything llama.cpp's "llama" architecture would run differently from our architecture is refused
    /// here, before anything is written.</summary>
    private static void Validate(ModelArchitecture a, Llama2cTokenizer tokenizer)
    {
        a.Validate();
        void Require(bool ok, string expected, object found)
        {
            if (!ok) throw new InvalidDataException($"a llama GGUF needs {expected}; found {found}");
        }
        Require(a.Norm == NormKind.RmsNorm, "RmsNorm", a.Norm);
        Require(a.Mlp == MlpKind.SwiGlu, "a SwiGlu MLP", a.Mlp);
        Require(a.Positions == PositionEmbedding.Rotary, "rotary positions", a.Positions);
        Require(a.Rotary == RotaryConvention.Interleaved,
            "the Interleaved rotary convention (llama.cpp's NORM rope pairs channels 2i, 2i+1)", a.Rotary);
        Require(a.RopeScaling is null, "no rope scaling", a.RopeScaling?.Kind!);
        Require(a.HeadDim is null || a.HeadDim == a.DModel / a.Heads,
            $"head size d_model / heads = {a.DModel / a.Heads}", $"head_dim {a.HeadDim}");
        Require(tokenizer.VocabSize == a.VocabSize, $"a tokenizer of the model's {a.VocabSize} tokens",
            $"{tokenizer.VocabSize} tokens");
    }
}
