using System.Security.Cryptography;

namespace FeatureFlow.Models.Llama2c;

/// <summary>
/// Reads llama2.c "v0" checkpoints: a header of 7 little-endian int32 (dim, hidden_dim, n_layers,
/// n_heads, n_kv_heads, vocab_size, seq_len; a negative vocab_size means an untied classifier follows),
/// then the float32 tensors in run.c's order.
/// </summary>
public static class Llama2cCheckpoint
{
    private const int HeaderInts = 7;

    public static LoadedCheckpoint Read(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"llama2.c checkpoint not found: {path}", path);
        var bytes = File.ReadAllBytes(path);
        if (bytes.Length < HeaderInts * 4) throw new InvalidDataException($"{path}: too short for a llama2.c header ({bytes.Length} bytes)");
        var header = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, int>(bytes.AsSpan(0, HeaderInts * 4));
        var tied = header[5] > 0;
        var arch = new ModelArchitecture
        {
            Family = "llama2c",
            DModel = header[0],
            HiddenDim = header[1],
            Layers = header[2],
            Heads = header[3],
            KvHeads = header[4],
            VocabSize = Math.Abs(header[5]),
            ContextLength = header[6],
            TiedEmbeddings = tied,
        };
        try { arch.Validate(); }
        catch (InvalidDataException e) { throw new InvalidDataException($"{path}: {e.Message}", e); }

        var reader = new FloatReader(bytes, HeaderInts * 4, path);
        int d = arch.DModel, h = arch.HiddenDim, l = arch.Layers, kv = arch.KvDim, v = arch.VocabSize;
        var embedding = reader.Take(v * d);
        var rmsAtt = reader.TakeLayers(l, d);
        var wq = reader.TakeLayers(l, d * d);
        var wk = reader.TakeLayers(l, kv * d);
        var wv = reader.TakeLayers(l, kv * d);
        var wo = reader.TakeLayers(l, d * d);
        var rmsFfn = reader.TakeLayers(l, d);
        var w1 = reader.TakeLayers(l, h * d);
        var w2 = reader.TakeLayers(l, d * h);
        var w3 = reader.TakeLayers(l, h * d);
        var rmsFinal = reader.Take(d);
        // Legacy freq_cis_real/imag tables: run.c skips them and recomputes RoPE on the fly.
        reader.Skip(arch.ContextLength * arch.HeadSize);
        var classifier = tied ? embedding : reader.Take(v * d);

        var weights = new LlamaWeights
        {
            TokenEmbedding = embedding, RmsAttention = rmsAtt, Wq = wq, Wk = wk, Wv = wv, Wo = wo,
            RmsFfn = rmsFfn, W1 = w1, W2 = w2, W3 = w3, RmsFinal = rmsFinal, Classifier = classifier,
        };
        return new LoadedCheckpoint(arch, weights, Path.GetFullPath(path), Convert.ToHexStringLower(SHA256.HashData(bytes)));
    }

    private sealed class FloatReader(byte[] bytes, int offset, string path)
    {
        private int _offset = offset;

        public float[] Take(int count)
        {
            var end = (long)_offset + 4L * count;
            if (end > bytes.Length)
                throw new InvalidDataException($"{path}: truncated checkpoint (needs at least {end} bytes, has {bytes.Length})");
            var result = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(bytes.AsSpan(_offset, 4 * count)).ToArray();
            _offset = (int)end;
            return result;
        }

        public float[][] TakeLayers(int layers, int count) => Enumerable.Range(0, layers).Select(_ => Take(count)).ToArray();

        public void Skip(int count) => _offset = (int)Math.Min(bytes.Length, (long)_offset + 4L * count);
    }
}
