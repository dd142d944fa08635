using FeatureFlow.Models;
using FeatureFlow.Models.Export;
using FeatureFlow.Steering;
using Microsoft.ML.OnnxRuntime;

namespace FeatureFlow.Engine;

/// <summary>
/// One loaded decoder graph (hooked or plain) and the step that runs it: feed new tokens with the KV
/// cache of earlier ones, get logits for every new position. Thread-safe: each generation owns a
/// <see cref="DecoderState"/>, and ONNX Runtime sessions accept concurrent runs.
/// </summary>
public sealed class HookedDecoder : IDisposable
{
    private readonly InferenceSession _session;
    private readonly string[] _outputNames;
    private readonly long[] _ones;

    public HookedDecoder(string graphPath, ModelArchitecture architecture, EngineOptions options)
    {
        Architecture = architecture;
        (_session, Provider) = SessionFactory.Create(graphPath, options);
        HasHooks = _session.InputMetadata.ContainsKey(GraphNames.SteeringAdd);
        if (HasHooks)
        {
            var dims = _session.InputMetadata[GraphNames.SteeringDecoder].Dimensions;
            SteeringShape = new SteeringShape(architecture.Layers, architecture.DModel, dims[2]);
        }
        _outputNames = [GraphNames.Logits, .. Enumerable.Range(0, architecture.Layers).SelectMany(l => new[] { GraphNames.PresentKey(l), GraphNames.PresentValue(l) })];
        _ones = Enumerable.Repeat(1L, architecture.ContextLength).ToArray();
    }

    public ModelArchitecture Architecture { get; }
    public ExecutionProviderInfo Provider { get; }
    public bool HasHooks { get; }
    /// <summary>The steering inputs' shape; null for a graph without hooks.</summary>
    public SteeringShape? SteeringShape { get; }

    public DecoderState NewState() => new(Architecture);

    /// <summary>Binds a steering plan's tensors for the lifetime of one generation (no copies: the arrays are pinned).</summary>
    public BoundSteering Bind(SteeringTensors tensors)
    {
        if (!HasHooks) throw new InvalidOperationException("this graph has no steering hooks");
        if (tensors.Shape != SteeringShape) throw new ArgumentException($"steering tensors {tensors.Shape} do not fit the graph's {SteeringShape}");
        return new BoundSteering(tensors);
    }

    /// <summary>
    /// Runs <paramref name="tokens"/> at the state's next positions and advances the state.
    /// Returns logits [tokens.Length, vocab], row-major.
    /// </summary>
    public float[] Forward(DecoderState state, ReadOnlySpan<int> tokens, BoundSteering? steering)
    {
        if (HasHooks != (steering is not null))
            throw new ArgumentException(HasHooks ? "the hooked graph needs steering tensors (bind an identity plan for none)" : "the plain graph takes no steering");
        var count = tokens.Length;
        var total = state.Position + count;
        if (count == 0) throw new ArgumentException("no tokens to run");
        if (total > Architecture.ContextLength)
            throw new InvalidOperationException($"position {total} is past the context length {Architecture.ContextLength}");

        var ids = new long[count];
        var positions = new long[count];
        for (var i = 0; i < count; i++)
        {
            ids[i] = tokens[i];
            positions[i] = state.Position + i;
        }
        var names = new List<string>(4 + 2 * Architecture.Layers + 4);
        var values = new List<OrtValue>(names.Capacity);
        using var idsValue = OrtValue.CreateTensorValueFromMemory(ids, [1, count]);
        using var maskValue = OrtValue.CreateTensorValueFromMemory(OrtMemoryInfo.DefaultInstance, new Memory<long>(_ones, 0, total), [1, total]);
        using var positionsValue = OrtValue.CreateTensorValueFromMemory(positions, [1, count]);
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

        var outputs = _session.Run(state.RunOptions, names, values, _outputNames);
        float[] logits;
        try
        {
            logits = outputs[0].GetTensorDataAsSpan<float>().ToArray();
        }
        catch
        {
            outputs.Dispose();
            throw;
        }
        outputs[0].Dispose();
        var presents = new OrtValue[2 * Architecture.Layers];
        for (var i = 0; i < presents.Length; i++) presents[i] = outputs[1 + i];
        state.Advance(count, presents);
        return logits;
    }

    public void Dispose() => _session.Dispose();
}

/// <summary>The KV cache and position of one sequence. Owns the ONNX Runtime values it holds.</summary>
public sealed class DecoderState : IDisposable
{
    internal DecoderState(ModelArchitecture arch)
    {
        var empty = new long[] { 1, arch.KvHeads, 0, arch.HeadSize };
        PastKeys = Enumerable.Range(0, arch.Layers).Select(_ => OrtValue.CreateTensorValueFromMemory(Array.Empty<float>(), empty)).ToArray();
        PastValues = Enumerable.Range(0, arch.Layers).Select(_ => OrtValue.CreateTensorValueFromMemory(Array.Empty<float>(), empty)).ToArray();
    }

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

/// <summary>A steering row bound as ONNX Runtime values over its (pinned) arrays.</summary>
public sealed class BoundSteering : IDisposable
{
    internal BoundSteering(SteeringTensors t)
    {
        long batch = 1, sites = t.Shape.Sites, slots = t.Shape.SlotsPerSite, d = t.Shape.DModel;
        Values =
        [
            OrtValue.CreateTensorValueFromMemory(t.Add, [batch, sites, d]),
            OrtValue.CreateTensorValueFromMemory(t.Encoder, [batch, sites, d, slots]),
            OrtValue.CreateTensorValueFromMemory(t.Decoder, [batch, sites, slots, d]),
            OrtValue.CreateTensorValueFromMemory(t.Coefficients, [batch, sites, GraphNames.CoefficientRows, slots]),
        ];
    }

    internal OrtValue[] Values { get; }

    public void Dispose()
    {
        foreach (var v in Values) v.Dispose();
    }
}
