using LLama;
using LLama.Common;
using LLama.Native;

namespace FeatureFlow.LlamaCpp;

/// <summary>
/// llama.cpp (through LLamaSharp) on a GGUF: greedy decoding on <c>threads</c> threads (one unless told), from token
/// ids we give it, with or without a control vector; its logits, tokenizer and the shape it read from the file.
/// </summary>
public sealed class LlamaCppPeer : IDisposable
{
    private readonly ModelParams _params;
    private readonly LLamaWeights _weights;

    public LlamaCppPeer(string ggufPath, int threads = 1)
    {
        // Only llama.cpp's errors are worth showing; its info lines (model card, buffer sizes) drown the test log.
        NativeLogConfig.llama_log_set((level, message) =>
        {
            if (level == LLamaLogLevel.Error) Console.Error.Write(message);
        });
        _params = new ModelParams(ggufPath)
        {
            ContextSize = 512, GpuLayerCount = 0, Threads = threads, BatchThreads = threads,
        };
        Threads = threads;
        _weights = LLamaWeights.LoadFromFile(_params);
    }

    public int Threads { get; }
    public int Layers => _weights.NativeHandle.LayerCount;
    public int EmbeddingSize => _weights.EmbeddingSize;
    public int Bos => (int)_weights.Vocab.BOS!.Value;
    public int Eos => (int)_weights.Vocab.EOS!.Value;
    public bool AddsBos => _weights.Vocab.ShouldAddBOS;
    public int VocabSize => _weights.Vocab.Count;
    public int Heads => _weights.NativeHandle.HeadCount;
    public int KvHeads => _weights.NativeHandle.KVHeadCount;
    public int TrainedContext => _weights.NativeHandle.ContextSize;
    public LLamaRopeType RopeType => _weights.NativeHandle.RopeType;
    public float RopeFrequency => _weights.NativeHandle.RopeFrequency;

    /// <summary>llama.cpp's tokenizer on <paramref name="text"/>, BOS first, no special-token parsing.</summary>
    public int[] Tokenize(string text) =>
        _weights.Tokenize(text, add_bos: true, special: false, System.Text.Encoding.UTF8).Select(t => (int)t).ToArray();

    /// <summary>
    /// The logits after every token of <paramref name="ids"/> (used verbatim), from one batch, computed in float32
    /// throughout: llama.cpp's defaults (a float16 KV cache, and flash attention, which works in float16 on the CPU)
    /// would each put ~1e-3 of rounding into the logits.
    /// </summary>
    public float[][] Logits(int[] ids)
    {
        var float32 = new ModelParams(_params.ModelPath)
        {
            ContextSize = _params.ContextSize, GpuLayerCount = 0, Threads = 1, BatchThreads = 1,
            TypeK = GGMLType.GGML_TYPE_F32, TypeV = GGMLType.GGML_TYPE_F32, FlashAttention = false,
        };
        using var context = _weights.CreateContext(float32);
        var batch = new LLamaBatch();
        for (var i = 0; i < ids.Length; i++) batch.Add(ids[i], i, LLamaSeqId.Zero, logits: true);
        var result = context.NativeHandle.Decode(batch);
        if (result != DecodeResult.Ok) throw new InvalidOperationException($"llama_decode failed: {result}");
        return Enumerable.Range(0, ids.Length).Select(i => context.NativeHandle.GetLogitsIth(i).ToArray()).ToArray();
    }

    /// <summary>
    /// Greedy tokens after <paramref name="promptIds"/> (used verbatim, BOS included), with the control vector
    /// <paramref name="controlVector"/> (in <c>llama_set_adapter_cvec</c>'s layout: slot i is layer i+1) applied
    /// to every layer llama.cpp allows. Stops at BOS or EOS, which end a story for this model, without them.
    /// llama.cpp's default cache and attention settings. <paramref name="started"/> is called once the context
    /// (llama.cpp's KV cache) is made, just before the prompt runs, and <paramref name="sampled"/> after the first
    /// token is sampled: a benchmark's clock.
    /// </summary>
    public unsafe List<int> Greedy(int[] promptIds, int maxTokens, float[]? controlVector = null,
        Action? started = null, Action? sampled = null)
    {
        using var context = _weights.CreateContext(_params);
        var handle = context.NativeHandle;
        if (controlVector is not null)
            fixed (float* data = controlVector)
            {
                var rc = NativeApi.llama_set_adapter_cvec(
                    handle, data, (nuint)controlVector.Length, EmbeddingSize, 1, Layers - 1);
                if (rc != 0) throw new InvalidOperationException($"llama_set_adapter_cvec failed ({rc})");
            }
        using var sampler = SafeLLamaSamplerChainHandle.Create(LLamaSamplerChainParams.Default());
        sampler.AddGreedySampler();
        var batch = new LLamaBatch();
        for (var i = 0; i < promptIds.Length; i++)
            batch.Add(promptIds[i], i, LLamaSeqId.Zero, logits: i == promptIds.Length - 1);
        var tokens = new List<int>(maxTokens);
        started?.Invoke();
        for (var position = promptIds.Length; tokens.Count < maxTokens; position++)
        {
            var result = handle.Decode(batch);
            if (result != DecodeResult.Ok) throw new InvalidOperationException($"llama_decode failed: {result}");
            var next = (int)sampler.Sample(handle, -1);
            if (position == promptIds.Length) sampled?.Invoke();
            if (next == Bos || next == Eos) break;
            tokens.Add(next);
            batch.Clear();
            batch.Add(next, position, LLamaSeqId.Zero, true);
        }
        return tokens;
    }

    public void Dispose() => _weights.Dispose();
}
