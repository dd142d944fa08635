using System.Runtime.InteropServices;
using FeatureFlow.Models;
using FeatureFlow.Models.Export;
using FeatureFlow.Onnx;
using FeatureFlow.Steering;
using Microsoft.ML.OnnxRuntimeGenAI;

namespace FeatureFlow.Engine;

/// <summary>
/// The four steering inputs of one GenAI generator (batch 1) in pinned arrays. GenAI wraps a caller's buffer
/// without copying and binds it to every run of the generator, so writing new values between runs changes what
/// the next run sees: the prompt's steering while the prompt runs, the generated tokens' steering after it.
/// </summary>
internal sealed class GenAiSteeringInputs : IDisposable
{
    private readonly Input[] _inputs;

    public GenAiSteeringInputs(SteeringShape shape)
    {
        long sites = shape.Sites, d = shape.DModel, slots = shape.SlotsPerSite;
        _inputs =
        [
            new Input(GraphNames.SteeringAdd, [1, sites, d]),
            new Input(GraphNames.SteeringEncoder, [1, sites, d, slots]),
            new Input(GraphNames.SteeringDecoder, [1, sites, slots, d]),
            new Input(GraphNames.SteeringCoefficients, [1, sites, GraphNames.CoefficientRows, slots]),
        ];
    }

    /// <summary>
    /// The steering inputs' shape as the graph declares them (sites and d_model from steering.add, slots from
    /// steering.decoder); null when the graph has none of them.
    /// </summary>
    public static SteeringShape? ReadShape(string graphPath)
    {
        var inputs = OnnxModelFile.Read(graphPath).Graph.Input.ToDictionary(i => i.Name);
        string[] names = [GraphNames.SteeringAdd, GraphNames.SteeringEncoder, GraphNames.SteeringDecoder,
            GraphNames.SteeringCoefficients];
        var present = names.Where(inputs.ContainsKey).ToArray();
        if (present.Length == 0) return null;
        if (present.Length != names.Length)
            throw new InvalidDataException(
                $"{graphPath}: has {string.Join(", ", present)} but not {string.Join(", ", names.Except(present))}");
        long Dim(string name, int axis)
        {
            var dims = inputs[name].Type.TensorType.Shape.Dim;
            return axis < dims.Count && dims[axis].DimValue > 0 ? dims[axis].DimValue
                : throw new InvalidDataException($"{graphPath}: input {name} has no fixed size on axis {axis}");
        }
        var sites = Dim(GraphNames.SteeringAdd, 1);
        if (sites % Site.KindsPerLayer != 0)
            throw new InvalidDataException(
                $"{graphPath}: {GraphNames.SteeringAdd} has {sites} sites, not a multiple of {Site.KindsPerLayer}");
        var shape = new SteeringShape((int)(sites / Site.KindsPerLayer), (int)Dim(GraphNames.SteeringAdd, 2),
            (int)Dim(GraphNames.SteeringDecoder, 2));
        long[][] expected =
        [
            [shape.Sites, shape.DModel], [shape.Sites, shape.DModel, shape.SlotsPerSite],
            [shape.Sites, shape.SlotsPerSite, shape.DModel], [shape.Sites, GraphNames.CoefficientRows, shape.SlotsPerSite],
        ];
        for (var i = 0; i < names.Length; i++)
        {
            var found = Enumerable.Range(1, expected[i].Length).Select(axis => Dim(names[i], axis)).ToArray();
            if (!found.SequenceEqual(expected[i]))
                throw new InvalidDataException(
                    $"{graphPath}: {names[i]} is [batch, {string.Join(", ", found)}], "
                    + $"expected [batch, {string.Join(", ", expected[i])}]");
        }
        return shape;
    }

    /// <summary>Hands the buffers to the generator; they must outlive it.</summary>
    public void BindTo(Generator generator)
    {
        foreach (var input in _inputs) generator.SetModelInput(input.Name, input.Tensor);
    }

    public void Write(SteeringTensors tensors)
    {
        float[][] sources = [tensors.Add, tensors.Encoder, tensors.Decoder, tensors.Coefficients];
        for (var i = 0; i < _inputs.Length; i++) sources[i].CopyTo(_inputs[i].Buffer, 0);
    }

    public void Dispose()
    {
        foreach (var input in _inputs) input.Tensor.Dispose();
    }

    private sealed class Input
    {
        public Input(string name, long[] shape)
        {
            Name = name;
            // Pinned: GenAI keeps the address. At least one element so the address exists.
            Buffer = GC.AllocateArray<float>((int)Math.Max(1, shape.Aggregate(1L, (a, b) => a * b)), pinned: true);
            Tensor = new Tensor(Marshal.UnsafeAddrOfPinnedArrayElement(Buffer, 0), shape, ElementType.float32);
        }

        public string Name { get; }
        public float[] Buffer { get; }
        public Tensor Tensor { get; }
    }
}
