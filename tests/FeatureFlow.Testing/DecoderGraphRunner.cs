using FeatureFlow.Models.Export;
using FeatureFlow.Models.Hooking;
using FeatureFlow.Steering;
using System.Runtime.InteropServices;
using Microsoft.ML.OnnxRuntime;

namespace FeatureFlow.Testing;

/// <summary>
/// Drives a third-party decoder graph, hooked or not, through its own I/O as <see cref="DecoderIo"/> describes it (the
/// manifest's hooking section): token/position/mask inputs in the graph's integer type, the KV cache packed or
/// separate, float32 or float16, presents fed back as the next step's past; logits come back as float32 either way.
/// Rows of a batch share one length (no padding). CPU only, with ONNX Runtime's full graph optimisation, as the
/// fixtures' expected outputs were produced.
/// </summary>
public sealed class DecoderGraphRunner : IDisposable
{
    private readonly InferenceSession _session;
    private readonly DecoderIo _io;
    private readonly int _layers;
    private readonly SteeringShape? _steering;
    private readonly Dictionary<string, OrtValue> _past = new(StringComparer.Ordinal);

    public DecoderGraphRunner(string graphPath, DecoderIo io, int layers, int batch, int dModel)
    {
        using var options = new SessionOptions { GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL };
        _session = new InferenceSession(graphPath, options);
        (_io, _layers, Batch) = (io, layers, batch);
        var encoder = _session.InputMetadata.GetValueOrDefault(GraphNames.SteeringEncoder);
        _steering = encoder is null ? null : new SteeringShape(layers, dModel, encoder.Dimensions[^1]);
        for (var l = 0; l < layers; l++)
            foreach (var value in PastNames(l))
                _past[value] = io.Kv.Type == "float16"
                    ? OrtValue.CreateTensorValueFromMemory(Array.Empty<Float16>(), EmptyPast())
                    : OrtValue.CreateTensorValueFromMemory(Array.Empty<float>(), EmptyPast());
    }

    public int Batch { get; }
    public int Position { get; private set; }
    public SteeringShape? SteeringShape => _steering;

    /// <summary>
    /// Runs <paramref name="tokens"/> ([batch, T] row-major) after the tokens run so far; returns logits [batch, T, vocab].
    /// A hooked graph gets <paramref name="steering"/> (one row per batch row; null: all zero, the identity).
    /// </summary>
    public float[] Step(int[] tokens, IReadOnlyList<SteeringTensors>? steering = null)
    {
        if (steering is not null && _steering is null) throw new ArgumentException("the graph has no steering inputs");
        var count = tokens.Length / Batch;
        var total = Position + count;
        var inputs = new Dictionary<string, OrtValue>(StringComparer.Ordinal);
        try
        {
            inputs[_io.InputIds.Name] = Integers(_io.InputIds, tokens.Select(t => (long)t), [Batch, count]);
            if (_io.PositionIds is { } positions)
                inputs[positions.Name] = Integers(positions, Enumerable.Range(0, tokens.Length).Select(i => (long)(Position + i % count)), [Batch, count]);
            if (_io.AttentionMask is { } mask)
                inputs[mask.Name] = Integers(mask, Enumerable.Repeat(1L, Batch * total), [Batch, total]);
            if (_steering is { } shape)
            {
                var rows = steering ?? Enumerable.Range(0, Batch).Select(_ => new SteeringTensors(shape)).ToArray();
                long b = Batch, sites = shape.Sites, d = shape.DModel, k = shape.SlotsPerSite;
                inputs[GraphNames.SteeringAdd] = Stack(rows.Select(r => r.Add), [b, sites, d]);
                inputs[GraphNames.SteeringEncoder] = Stack(rows.Select(r => r.Encoder), [b, sites, d, k]);
                inputs[GraphNames.SteeringDecoder] = Stack(rows.Select(r => r.Decoder), [b, sites, k, d]);
                inputs[GraphNames.SteeringCoefficients] = Stack(rows.Select(r => r.Coefficients), [b, sites, GraphNames.CoefficientRows, k]);
            }
            var presentNames = Enumerable.Range(0, _layers).SelectMany(PresentNames).ToArray();
            using var runOptions = new RunOptions();
            var outputs = _session.Run(runOptions, [.. inputs.Keys, .. _past.Keys], [.. inputs.Values, .. _past.Values],
                [_io.Logits.Name, .. presentNames]);
            using var logits = outputs[0];
            var pastNames = Enumerable.Range(0, _layers).SelectMany(PastNames).ToArray();
            for (var i = 0; i < pastNames.Length; i++)
            {
                _past[pastNames[i]].Dispose();
                _past[pastNames[i]] = outputs[1 + i];
            }
            Position = total;
            return _io.Logits.Type == "float16"
                ? Array.ConvertAll(MemoryMarshal.Cast<Float16, Half>(logits.GetTensorDataAsSpan<Float16>()).ToArray(), h => (float)h)
                : logits.GetTensorDataAsSpan<float>().ToArray();
        }
        finally
        {
            foreach (var value in inputs.Values) value.Dispose();
        }
    }

    /// <summary>Greedy decoding of equally long prompts until each sequence holds <paramref name="maxLength"/> tokens.</summary>
    public int[][] Greedy(int[][] prompts, int maxLength)
    {
        var sequences = prompts.Select(p => p.ToList()).ToArray();
        var next = prompts.SelectMany(p => p).ToArray();
        while (sequences[0].Count < maxLength)
        {
            var logits = Step(next);
            var count = next.Length / Batch;
            var vocab = logits.Length / next.Length;
            next = new int[Batch];
            for (var b = 0; b < Batch; b++)
            {
                next[b] = Numerics.ArgMax(logits.AsSpan(((b * count) + count - 1) * vocab, vocab));
                sequences[b].Add(next[b]);
            }
        }
        return sequences.Select(s => s.ToArray()).ToArray();
    }

    private IEnumerable<string> PastNames(int layer) => _io.Kv.Packing == KvCacheIo.PackedPacking
        ? [_io.Kv.PastName(layer, false)] : [_io.Kv.PastName(layer, false), _io.Kv.PastName(layer, true)];

    private IEnumerable<string> PresentNames(int layer) => _io.Kv.Packing == KvCacheIo.PackedPacking
        ? [_io.Kv.PresentName(layer, false)] : [_io.Kv.PresentName(layer, false), _io.Kv.PresentName(layer, true)];

    private long[] EmptyPast() => _io.Kv.Packing == KvCacheIo.PackedPacking
        ? [2, Batch, _io.Kv.Heads, 0, _io.Kv.HeadSize]
        : [Batch, _io.Kv.Heads, 0, _io.Kv.HeadSize];

    private static OrtValue Integers(IoTensor input, IEnumerable<long> values, long[] shape) => input.Type switch
    {
        "int64" => OrtValue.CreateTensorValueFromMemory(values.ToArray(), shape),
        "int32" => OrtValue.CreateTensorValueFromMemory(values.Select(v => checked((int)v)).ToArray(), shape),
        var t => throw new NotSupportedException($"{input.Name}: {t} inputs"),
    };

    private static OrtValue Stack(IEnumerable<float[]> rows, long[] shape) =>
        OrtValue.CreateTensorValueFromMemory(rows.SelectMany(r => r).ToArray(), shape);

    public void Dispose()
    {
        foreach (var value in _past.Values) value.Dispose();
        _session.Dispose();
    }
}
