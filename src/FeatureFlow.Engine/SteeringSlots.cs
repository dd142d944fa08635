using FeatureFlow.Models.Export;
using FeatureFlow.Steering;
using Microsoft.ML.OnnxRuntime;

namespace FeatureFlow.Engine;

/// <summary>
/// The four steering inputs of the batched graph, one row per KV slot. A row's tensors are written once when it
/// joins (the prompt set) and once after its prefill (the generated set); steps bind the prefix as it is, so
/// steering costs no copy per step, and a row without steering is all zeros (the hook's identity). Whether a
/// slot is the identity is decided once per write, so a step can choose the graph without hooks at no cost.
/// </summary>
public sealed class SteeringSlots : IDisposable
{
    private readonly RowTensor<float> _add, _encoder, _decoder, _coefficients;
    private readonly OrtValue[]?[] _prefixes;
    private readonly OrtValue[]?[] _rows;
    private readonly BoundSteering?[] _bound;
    private readonly bool[] _identity;

    public SteeringSlots(SteeringShape shape, int rows)
    {
        Shape = shape;
        long sites = shape.Sites, d = shape.DModel, k = shape.SlotsPerSite;
        _add = new RowTensor<float>(rows, sites, d);
        _encoder = new RowTensor<float>(rows, sites, d, k);
        _decoder = new RowTensor<float>(rows, sites, k, d);
        _coefficients = new RowTensor<float>(rows, sites, GraphNames.CoefficientRows, k);
        _prefixes = new OrtValue[rows + 1][];
        _rows = new OrtValue[rows][];
        _bound = new BoundSteering?[rows];
        _identity = new bool[rows];
        Array.Fill(_identity, true); // the buffers start zero
    }

    public SteeringShape Shape { get; }

    private RowTensor<float>[] Parts => [_add, _encoder, _decoder, _coefficients];

    public void Write(int slot, SteeringTensors tensors)
    {
        if (tensors.Shape != Shape) throw new ArgumentException($"steering tensors {tensors.Shape} do not fit the graph's {Shape}");
        tensors.Add.CopyTo(_add.Row(slot));
        tensors.Encoder.CopyTo(_encoder.Row(slot));
        tensors.Decoder.CopyTo(_decoder.Row(slot));
        tensors.Coefficients.CopyTo(_coefficients.Row(slot));
        _identity[slot] = tensors.IsIdentity;
    }

    /// <summary>Whether the row in <paramref name="slot"/> steers nothing.</summary>
    public bool IsIdentity(int slot) => _identity[slot];

    /// <summary>
    /// Whether every row 0..<paramref name="rows"/>−1 steers nothing (<see cref="SteeringTensors.IsIdentity"/>).
    /// </summary>
    public bool AllIdentity(int rows) => !_identity.AsSpan(0, rows).Contains(false);

    public void Move(int from, int to)
    {
        foreach (var part in Parts) part.Copy(from, to);
        _identity[to] = _identity[from];
    }

    /// <summary>add, encoder, decoder, coefficients of rows 0..<paramref name="rows"/>−1.</summary>
    public OrtValue[] Prefix(int rows) => _prefixes[rows] ??= Parts.Select(p => p.Prefix(rows)).ToArray();

    public OrtValue[] Row(int slot) => _rows[slot] ??= Parts.Select(p => p.RowValue(slot)).ToArray();

    /// <summary>The row in <paramref name="slot"/> as a batch of one for <see cref="HookedDecoder"/>.</summary>
    public BoundSteering Bound(int slot) => _bound[slot] ??= new BoundSteering(Row(slot), 1);

    public void Dispose()
    {
        foreach (var part in Parts) part.Dispose();
    }
}
