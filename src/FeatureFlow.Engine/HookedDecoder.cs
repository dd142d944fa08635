using FeatureFlow.Models;
using FeatureFlow.Models.Export;
using FeatureFlow.Steering;
using Microsoft.ML.OnnxRuntime;

namespace FeatureFlow.Engine;

/// <summary>
/// One loaded plain-operator decoder graph (hooked or plain) and the step that runs it: feed new tokens with
/// the KV cache of earlier ones, get logits and site values for every new position. The reference runner for
/// tests, activation collection and scoring (the server runs the batched graph through <see cref="ModelRunner"/>).
/// Thread-safe: each caller owns a <see cref="DecoderState"/>, and ONNX Runtime sessions accept concurrent runs.
/// </summary>
public sealed class HookedDecoder : IDisposable
{
    private readonly InferenceSession _session;
    private readonly string[] _outputNames;
    private long[] _ones = [];

    /// <param name="weights">The folder's weights, shared with its other sessions (not owned); null: its own.</param>
    public HookedDecoder(string graphPath, ModelArchitecture architecture, EngineOptions options,
        SharedWeights? weights = null)
    {
        Architecture = architecture;
        (_session, Provider) = SessionFactory.Create(graphPath, options, weights);
        HasHooks = _session.InputMetadata.ContainsKey(GraphNames.SteeringAdd);
        if (HasHooks)
        {
            var dims = _session.InputMetadata[GraphNames.SteeringDecoder].Dimensions;
            SteeringShape = new SteeringShape(architecture.Layers, architecture.DModel, dims[2]);
        }
        _outputNames = [GraphNames.Logits, .. Enumerable.Range(0, architecture.Layers).SelectMany(l => new[] { GraphNames.PresentKey(l), GraphNames.PresentValue(l) })];
    }

    public ModelArchitecture Architecture { get; }
    public ExecutionProviderInfo Provider { get; }
    public bool HasHooks { get; }
    /// <summary>The steering inputs' shape; null for a graph without hooks.</summary>
    public SteeringShape? SteeringShape { get; }

    public DecoderState NewState(int batch = 1) => new(Architecture, batch);

    /// <summary>Binds one row's steering tensors for the lifetime of a generation (no copies: the arrays are pinned).</summary>
    public BoundSteering Bind(SteeringTensors tensors) => Bind([tensors]);

    /// <summary>Binds one set of steering tensors per batch row.</summary>
    public BoundSteering Bind(IReadOnlyList<SteeringTensors> rows)
    {
        if (!HasHooks) throw new InvalidOperationException("this graph has no steering hooks");
        foreach (var t in rows)
            if (t.Shape != SteeringShape) throw new ArgumentException($"steering tensors {t.Shape} do not fit the graph's {SteeringShape}");
        return new BoundSteering(rows);
    }

    /// <summary>
    /// Runs <paramref name="tokens"/> ([batch, T] row-major) at the state's next positions and advances
    /// the state. Returns logits [batch, T, vocab], row-major.
    /// </summary>
    public float[] Forward(DecoderState state, ReadOnlySpan<int> tokens, BoundSteering? steering) =>
        Run(state, tokens, steering, []).Logits;

    /// <summary>
    /// As <see cref="Forward"/>, and also returns the (steered) value at each of <paramref name="readout"/>'s
    /// sites, [batch, T, d_model] each, from the graph's site outputs.
    /// </summary>
    public StepOutput Run(DecoderState state, ReadOnlySpan<int> tokens, BoundSteering? steering, IReadOnlyList<Site> readout)
    {
        if (HasHooks != (steering is not null))
            throw new ArgumentException(HasHooks ? "the hooked graph needs steering tensors (bind an identity plan for none)" : "the plain graph takes no steering");
        if (steering is not null && steering.Batch != state.Batch)
            throw new ArgumentException($"steering is bound for {steering.Batch} rows, the state has {state.Batch}");
        var batch = state.Batch;
        if (tokens.Length == 0 || tokens.Length % batch != 0) throw new ArgumentException($"{tokens.Length} tokens do not fill {batch} rows");
        var count = tokens.Length / batch;
        var total = state.Position + count;
        if (total > Architecture.ContextLength)
            throw new InvalidOperationException($"position {total} is past the context length {Architecture.ContextLength}");

        var ids = new long[tokens.Length];
        var positions = new long[tokens.Length];
        for (var i = 0; i < tokens.Length; i++)
        {
            ids[i] = tokens[i];
            positions[i] = state.Position + i % count;
        }
        var names = new List<string>(4 + 2 * Architecture.Layers + 4);
        var values = new List<OrtValue>(names.Capacity);
        using var idsValue = OrtValue.CreateTensorValueFromMemory(ids, [batch, count]);
        var ones = _ones;
        if (ones.Length < batch * total) _ones = ones = Enumerable.Repeat(1L, batch * Architecture.ContextLength).ToArray();
        using var maskValue = OrtValue.CreateTensorValueFromMemory(OrtMemoryInfo.DefaultInstance, new Memory<long>(ones, 0, batch * total), [batch, total]);
        using var positionsValue = OrtValue.CreateTensorValueFromMemory(positions, [batch, count]);
        names.AddRange([GraphNames.InputIds, GraphNames.AttentionMask, GraphNames.PositionIds]);
        values.AddRange([idsValue, maskValue, positionsValue]);
        for (var l = 0; l < Architecture.Layers; l++)
        {
            names.Add(GraphNames.PastKey(l));
            values.Add(state.PastKeys[l]);
            names.Add(GraphNames.PastValue(l));
            values.Add(state.PastValues[l]);
        }
        if (steering is not null)
        {
            names.AddRange([GraphNames.SteeringAdd, GraphNames.SteeringEncoder, GraphNames.SteeringDecoder, GraphNames.SteeringCoefficients]);
            values.AddRange(steering.Values);
        }

        var outputNames = readout.Count == 0 ? _outputNames : [.. _outputNames, .. readout.Select(s => s.HookName)];
        var outputs = _session.Run(state.RunOptions, names, values, outputNames);
        var presentCount = 2 * Architecture.Layers;
        float[] logits;
        float[][] sites;
        try
        {
            logits = outputs[0].GetTensorDataAsSpan<float>().ToArray();
            sites = Enumerable.Range(0, readout.Count).Select(i => outputs[1 + presentCount + i].GetTensorDataAsSpan<float>().ToArray()).ToArray();
        }
        catch
        {
            outputs.Dispose();
            throw;
        }
        outputs[0].Dispose();
        for (var i = 0; i < readout.Count; i++) outputs[1 + presentCount + i].Dispose();
        var presents = new OrtValue[presentCount];
        for (var i = 0; i < presents.Length; i++) presents[i] = outputs[1 + i];
        state.Advance(count, presents);
        return new StepOutput(logits, sites);
    }

    public void Dispose() => _session.Dispose();
}

/// <summary>Logits [batch, T, vocab] and the read-out site values [batch, T, d_model] of one step.</summary>
public sealed record StepOutput(float[] Logits, float[][] Sites);

/// <summary>The KV cache and position of a batch of equally long sequences. Owns the ONNX Runtime values it holds.</summary>
public sealed class DecoderState : IDisposable
{
    internal DecoderState(ModelArchitecture arch, int batch)
    {
        if (batch < 1) throw new ArgumentOutOfRangeException(nameof(batch), "batch must be at least 1");
        Batch = batch;
        var empty = new long[] { batch, arch.KvHeads, 0, arch.HeadSize };
        PastKeys = Enumerable.Range(0, arch.Layers).Select(_ => OrtValue.CreateTensorValueFromMemory(Array.Empty<float>(), empty)).ToArray();
        PastValues = Enumerable.Range(0, arch.Layers).Select(_ => OrtValue.CreateTensorValueFromMemory(Array.Empty<float>(), empty)).ToArray();
    }

    public int Batch { get; }
    public int Position { get; private set; }
    internal OrtValue[] PastKeys { get; }
    internal OrtValue[] PastValues { get; }
    /// <summary>Per-sequence run options, so one generation's runs can be cancelled without touching others.</summary>
    internal RunOptions RunOptions { get; } = new();

    internal void Advance(int count, OrtValue[] presents)
    {
        for (var l = 0; l < PastKeys.Length; l++)
        {
            PastKeys[l].Dispose();
            PastValues[l].Dispose();
            PastKeys[l] = presents[2 * l];
            PastValues[l] = presents[2 * l + 1];
        }
        Position += count;
    }

    public void Dispose()
    {
        foreach (var v in PastKeys) v.Dispose();
        foreach (var v in PastValues) v.Dispose();
        RunOptions.Dispose();
    }
}

/// <summary>Steering rows bound as ONNX Runtime values (one row: over its pinned arrays; several: concatenated once).</summary>
public sealed class BoundSteering : IDisposable
{
    internal BoundSteering(IReadOnlyList<SteeringTensors> rows)
    {
        if (rows.Count == 0) throw new ArgumentException("no steering rows to bind");
        var shape = rows[0].Shape;
        long batch = rows.Count, sites = shape.Sites, slots = shape.SlotsPerSite, d = shape.DModel;
        Batch = rows.Count;
        float[] Rows(Func<SteeringTensors, float[]> part) => rows.Count == 1 ? part(rows[0]) : rows.SelectMany(part).ToArray();
        Values =
        [
            OrtValue.CreateTensorValueFromMemory(Rows(t => t.Add), [batch, sites, d]),
            OrtValue.CreateTensorValueFromMemory(Rows(t => t.Encoder), [batch, sites, d, slots]),
            OrtValue.CreateTensorValueFromMemory(Rows(t => t.Decoder), [batch, sites, slots, d]),
            OrtValue.CreateTensorValueFromMemory(Rows(t => t.Coefficients), [batch, sites, GraphNames.CoefficientRows, slots]),
        ];
    }

    /// <summary>Views someone else owns (a <see cref="SteeringSlots"/> row): disposing this leaves them alone.</summary>
    internal BoundSteering(OrtValue[] views, int batch)
    {
        Values = views;
        Batch = batch;
        _ownsValues = false;
    }

    private readonly bool _ownsValues = true;

    public int Batch { get; }
    internal OrtValue[] Values { get; }

    public void Dispose()
    {
        if (!_ownsValues) return;
        foreach (var v in Values) v.Dispose();
    }
}
