using FeatureFlow.Models;
using FeatureFlow.Models.Export;
using FeatureFlow.Steering;
using Microsoft.ML.OnnxRuntime;

namespace FeatureFlow.Benchmarks;

/// <summary>
/// One graph without hooks decoding one row greedily, a token per step. Both implementations bind the KV cache and
/// the logits in place (IOBinding over pinned arrays), so a plain and a fused graph of one layout run through the
/// same code and differ only in the graph.
/// </summary>
public interface IDecodeStepper : IDisposable
{
    /// <summary>Starts a new sequence with <paramref name="prompt"/>; returns the greedy next token.</summary>
    int Prefill(int[] prompt);

    /// <summary>Runs <paramref name="token"/> at the next position; returns the greedy next token.</summary>
    int Step(int token);
}

/// <summary>
/// A SharedBuffer graph, as the batching engine runs it: one [1, kv_heads, capacity, head_size] buffer per layer
/// bound as both past and present, written in place by GroupQueryAttention. The decode step's binding is made once
/// and only the pinned input values change, so a step allocates no managed memory.
/// </summary>
public sealed class SharedBufferStepper : IDecodeStepper
{
    private readonly InferenceSession _session;
    private readonly ModelArchitecture _arch;
    private readonly int _capacity;
    private readonly float[][] _keys, _values;
    private readonly long[] _token = Pinned<long>(1), _position = Pinned<long>(1);
    private readonly int[] _seqlensK = Pinned<int>(1), _total = Pinned<int>(1);
    private readonly float[] _logits;
    private readonly List<OrtValue> _decodeValues = [];
    private readonly OrtIoBinding _decode;
    private readonly RunOptions _runOptions = new();
    private int _past;

    private readonly SteeringTensors? _steering;

    /// <param name="steering">The row's steering, bound to a hooked graph's four steering inputs; null for a graph
    /// without hooks.</param>
    public SharedBufferStepper(InferenceSession session, ModelArchitecture arch, int capacity,
        SteeringTensors? steering = null)
    {
        (_session, _arch, _capacity, _steering) = (session, arch, capacity, steering);
        _keys = Enumerable.Range(0, arch.Layers).Select(_ => Pinned<float>(arch.KvDim * capacity)).ToArray();
        _values = Enumerable.Range(0, arch.Layers).Select(_ => Pinned<float>(arch.KvDim * capacity)).ToArray();
        _logits = Pinned<float>(arch.VocabSize);
        _decode = session.CreateIoBinding();
        Bind(_decode, _decodeValues, _token, _position, _seqlensK, _total, _logits, 1);
    }

    public int Prefill(int[] prompt)
    {
        var t = prompt.Length;
        if (t > _capacity) throw new ArgumentException($"a {t}-token prompt does not fit the capacity {_capacity}");
        var values = new List<OrtValue>();
        try
        {
            using var binding = _session.CreateIoBinding();
            var logits = new float[t * _arch.VocabSize];
            var ids = prompt.Select(id => (long)id).ToArray();
            Bind(binding, values, ids, Enumerable.Range(0, t).Select(p => (long)p).ToArray(), [t - 1], [t], logits, t);
            _session.RunWithBinding(_runOptions, binding);
            _past = t;
            return Greedy.ArgMax(logits.AsSpan((t - 1) * _arch.VocabSize));
        }
        finally
        {
            foreach (var v in values) v.Dispose();
        }
    }

    public int Step(int token)
    {
        if (_past >= _capacity) throw new InvalidOperationException($"the sequence is at the capacity {_capacity}");
        _token[0] = token;
        _position[0] = _past;
        _seqlensK[0] = _past;
        _total[0] = _past + 1;
        _session.RunWithBinding(_runOptions, _decode);
        _past++;
        return Greedy.ArgMax(_logits);
    }

    private void Bind(OrtIoBinding binding, List<OrtValue> values, long[] ids, long[] positions, int[] seqlensK,
        int[] total, float[] logits, int t)
    {
        OrtValue Over<T>(T[] data, params long[] shape) where T : unmanaged
        {
            var v = OrtValue.CreateTensorValueFromMemory(OrtMemoryInfo.DefaultInstance, data.AsMemory(), shape);
            values.Add(v);
            return v;
        }
        binding.BindInput(GraphNames.InputIds, Over(ids, 1, t));
        binding.BindInput(GraphNames.PositionIds, Over(positions, 1, t));
        binding.BindInput(GraphNames.SeqlensK, Over(seqlensK, 1));
        binding.BindInput(GraphNames.TotalSequenceLength, Over(total)); // a scalar: shape []
        for (var l = 0; l < _arch.Layers; l++)
        {
            var key = Over(_keys[l], 1, _arch.KvHeads, _capacity, _arch.HeadSize);
            var value = Over(_values[l], 1, _arch.KvHeads, _capacity, _arch.HeadSize);
            binding.BindInput(GraphNames.PastKey(l), key);
            binding.BindOutput(GraphNames.PresentKey(l), key);
            binding.BindInput(GraphNames.PastValue(l), value);
            binding.BindOutput(GraphNames.PresentValue(l), value);
        }
        binding.BindOutput(GraphNames.Logits, Over(logits, 1, t, _arch.VocabSize));
        if (_steering is not { Shape: var shape } steering) return;
        int sites = shape.Sites, d = shape.DModel, k = shape.SlotsPerSite;
        binding.BindInput(GraphNames.SteeringAdd, Over(steering.Add, 1, sites, d));
        binding.BindInput(GraphNames.SteeringEncoder, Over(steering.Encoder, 1, sites, d, k));
        binding.BindInput(GraphNames.SteeringDecoder, Over(steering.Decoder, 1, sites, k, d));
        binding.BindInput(GraphNames.SteeringCoefficients,
            Over(steering.Coefficients, 1, sites, GraphNames.CoefficientRows, k));
    }

    private static T[] Pinned<T>(int length) => GC.AllocateArray<T>(length, pinned: true);

    public void Dispose()
    {
        _decode.Dispose();
        foreach (var v in _decodeValues) v.Dispose();
        _runOptions.Dispose();
        _session.Dispose();
    }
}

/// <summary>
/// A Concat graph: past [1, kv_heads, P, head_size] in, present [1, kv_heads, P + 1, head_size] out, written by ONNX
/// Runtime straight into the other of two pinned buffers per layer, which then becomes the past (no copies besides
/// the graph's own). A present's shape changes every step, so each step makes its views (OrtValues) anew: those
/// few small objects are the managed bytes a step allocates, the same for a plain and a fused graph.
/// </summary>
public sealed class ConcatStepper : IDecodeStepper
{
    private readonly InferenceSession _session;
    private readonly ModelArchitecture _arch;
    private readonly int _capacity;
    // [buffer 0 or 1][layer]: the past lives in buffer _current, the present is written into the other.
    private readonly float[][][] _keys, _values;
    private readonly long[] _token = GC.AllocateArray<long>(1, pinned: true);
    private readonly long[] _position = GC.AllocateArray<long>(1, pinned: true);
    private readonly long[] _ones;
    private readonly float[] _logits;
    private readonly OrtIoBinding _binding;
    private readonly RunOptions _runOptions = new();
    private int _current, _past;

    public ConcatStepper(InferenceSession session, ModelArchitecture arch, int capacity)
    {
        (_session, _arch, _capacity) = (session, arch, capacity);
        float[][] Buffers() => Enumerable.Range(0, arch.Layers)
            .Select(_ => GC.AllocateArray<float>(arch.KvDim * capacity, pinned: true)).ToArray();
        _keys = [Buffers(), Buffers()];
        _values = [Buffers(), Buffers()];
        _ones = GC.AllocateArray<long>(capacity, pinned: true);
        Array.Fill(_ones, 1L);
        _logits = GC.AllocateArray<float>(arch.VocabSize, pinned: true);
        _binding = session.CreateIoBinding();
    }

    public int Prefill(int[] prompt)
    {
        if (prompt.Length > _capacity)
            throw new ArgumentException($"a {prompt.Length}-token prompt does not fit the capacity {_capacity}");
        _past = 0;
        var logits = new float[prompt.Length * _arch.VocabSize];
        Run(prompt.Select(id => (long)id).ToArray(), Enumerable.Range(0, prompt.Length).Select(p => (long)p).ToArray(),
            logits);
        return Greedy.ArgMax(logits.AsSpan((prompt.Length - 1) * _arch.VocabSize));
    }

    public int Step(int token)
    {
        if (_past >= _capacity) throw new InvalidOperationException($"the sequence is at the capacity {_capacity}");
        _token[0] = token;
        _position[0] = _past;
        Run(_token, _position, _logits);
        return Greedy.ArgMax(_logits);
    }

    private void Run(long[] ids, long[] positions, float[] logits)
    {
        int t = ids.Length, total = _past + t, next = 1 - _current;
        long[] pastShape = [1, _arch.KvHeads, _past, _arch.HeadSize];
        long[] presentShape = [1, _arch.KvHeads, total, _arch.HeadSize];
        var values = new List<OrtValue>(4 * _arch.Layers + 4);
        OrtValue Over<T>(Memory<T> data, long[] shape) where T : unmanaged
        {
            var v = OrtValue.CreateTensorValueFromMemory(OrtMemoryInfo.DefaultInstance, data, shape);
            values.Add(v);
            return v;
        }
        try
        {
            _binding.BindInput(GraphNames.InputIds, Over(ids.AsMemory(), [1, t]));
            _binding.BindInput(GraphNames.PositionIds, Over(positions.AsMemory(), [1, t]));
            _binding.BindInput(GraphNames.AttentionMask, Over(_ones.AsMemory(0, total), [1, total]));
            for (var l = 0; l < _arch.Layers; l++)
            {
                int pastLength = _arch.KvDim * _past, presentLength = _arch.KvDim * total;
                OrtValue Past(float[][][] buffers) => Over(buffers[_current][l].AsMemory(0, pastLength), pastShape);
                OrtValue Present(float[][][] buffers) => Over(buffers[next][l].AsMemory(0, presentLength), presentShape);
                _binding.BindInput(GraphNames.PastKey(l), Past(_keys));
                _binding.BindInput(GraphNames.PastValue(l), Past(_values));
                _binding.BindOutput(GraphNames.PresentKey(l), Present(_keys));
                _binding.BindOutput(GraphNames.PresentValue(l), Present(_values));
            }
            _binding.BindOutput(GraphNames.Logits, Over(logits.AsMemory(), [1, t, _arch.VocabSize]));
            _session.RunWithBinding(_runOptions, _binding);
            _current = next;
            _past = total;
        }
        finally
        {
            foreach (var v in values) v.Dispose();
        }
    }

    public void Dispose()
    {
        _binding.Dispose();
        _runOptions.Dispose();
        _session.Dispose();
    }
}

internal static class Greedy
{
    public static int ArgMax(ReadOnlySpan<float> logits)
    {
        var best = 0;
        for (var i = 1; i < logits.Length; i++) if (logits[i] > logits[best]) best = i;
        return best;
    }
}
