using LLama;
using LLama.Common;
using LLama.Native;

namespace FeatureFlow.LlamaCpp.Tests;

/// <summary>
/// llama.cpp (through LLamaSharp) on the shipped weights as GGUF: greedy decoding on one thread, from token ids
/// we give it, with or without a control vector.
/// </summary>
public sealed class LlamaCppPeer : IDisposable
{
    private readonly ModelParams _params;
    private readonly LLamaWeights _weights;

    public LlamaCppPeer(string ggufPath)
    {
        // Only llama.cpp's errors are worth showing; its info lines (model card, buffer sizes) drown the test log.
        NativeLogConfig.llama_log_set((level, message) =>
        {
            if (level == LLamaLogLevel.Error) Console.Error.Write(message);
        });
        _params = new ModelParams(ggufPath) { ContextSize = 512, GpuLayerCount = 0, Threads = 1, BatchThreads = 1 };
        _weights = LLamaWeights.LoadFromFile(_params);
    }

    public int Layers => _weights.NativeHandle.LayerCount;
    public int EmbeddingSize => _weights.EmbeddingSize;
    public int Bos => (int)_weights.Vocab.BOS!.Value;
    public int Eos => (int)_weights.Vocab.EOS!.Value;
    public bool AddsBos => _weights.Vocab.ShouldAddBOS;

    /// <summary>
    /// Greedy tokens after <paramref name="promptIds"/> (used verbatim, BOS included), with the control vector
    /// <paramref name="controlVector"/> (in <c>llama_set_adapter_cvec</c>'s layout: slot i is layer i+1) applied
    /// to every layer llama.cpp allows. Stops at BOS or EOS, which end a story for this model, without them.
    /// </summary>
    public unsafe List<int> Greedy(int[] promptIds, int maxTokens, float[]? controlVector = null)
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
        var tokens = new List<int>();
        for (var position = promptIds.Length; tokens.Count < maxTokens; position++)
        {
            var result = handle.Decode(batch);
            if (result != DecodeResult.Ok) throw new InvalidOperationException($"llama_decode failed: {result}");
            var next = (int)sampler.Sample(handle, -1);
            if (next == Bos || next == Eos) break;
            tokens.Add(next);
            batch.Clear();
            batch.Add(next, position, LLamaSeqId.Zero, true);
        }
        return tokens;
    }

    public void Dispose() => _weights.Dispose();
}
