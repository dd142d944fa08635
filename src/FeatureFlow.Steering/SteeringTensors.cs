using FeatureFlow.Models;
using FeatureFlow.Models.Export;

namespace FeatureFlow.Steering;

/// <summary>Shape of the steering inputs of one hooked graph.</summary>
public sealed record SteeringShape(int Layers, int DModel, int SlotsPerSite)
{
    public int Sites => Layers * Site.KindsPerLayer;
}

/// <summary>
/// One batch row of the hooked graph's steering inputs, as dense arrays: add [sites, d],
/// encoder [sites, d, slots] (stored transposed, ready for h·E), decoder [sites, slots, d],
/// coefficients [sites, 4, slots] (rows: encoder bias, threshold, α, β). All zero is the identity.
/// </summary>
public sealed class SteeringTensors
{
    public SteeringTensors(SteeringShape shape)
    {
        Shape = shape;
        Add = new float[shape.Sites * shape.DModel];
        Encoder = new float[shape.Sites * shape.SlotsPerSite * shape.DModel];
        Decoder = new float[shape.Sites * shape.SlotsPerSite * shape.DModel];
        Coefficients = new float[shape.Sites * GraphNames.CoefficientRows * shape.SlotsPerSite];
    }

    public SteeringShape Shape { get; }
    public float[] Add { get; }
    public float[] Encoder { get; }
    public float[] Decoder { get; }
    public float[] Coefficients { get; }

    /// <summary>
    /// Every input is zero, so the hook is h + 0 + (0·ReLU(0) + 0)·0 = h bit for bit and a graph without hooks
    /// may stand in for it. Zero add and decoder alone would not do: an overflowing encoder activation times a
    /// zero decoder is NaN.
    /// </summary>
    public bool IsIdentity => !Add.AsSpan().ContainsAnyExcept(0f) && !Decoder.AsSpan().ContainsAnyExcept(0f)
        && !Encoder.AsSpan().ContainsAnyExcept(0f) && !Coefficients.AsSpan().ContainsAnyExcept(0f);

    public Span<float> AddAt(Site site) => Add.AsSpan(site.Index * Shape.DModel, Shape.DModel);

    /// <summary>Encoder row of a slot (a copy: the row is a strided column of the stored layout).</summary>
    public float[] EncoderRow(Site site, int slot)
    {
        var row = new float[Shape.DModel];
        for (var i = 0; i < row.Length; i++) row[i] = Encoder[EncoderIndex(site, slot, i)];
        return row;
    }

    public void SetEncoderRow(Site site, int slot, ReadOnlySpan<float> row)
    {
        for (var i = 0; i < row.Length; i++) Encoder[EncoderIndex(site, slot, i)] = row[i];
    }

    private int EncoderIndex(Site site, int slot, int i) => (site.Index * Shape.DModel + i) * Shape.SlotsPerSite + slot;

    public Span<float> DecoderAt(Site site, int slot) => Decoder.AsSpan((site.Index * Shape.SlotsPerSite + slot) * Shape.DModel, Shape.DModel);

    public ref float Coefficient(Site site, GraphNames.CoefficientRow row, int slot) =>
        ref Coefficients[(site.Index * GraphNames.CoefficientRows + (int)row) * Shape.SlotsPerSite + slot];
}

/// <summary>A request's steering, compiled: the tensors bound while the prompt runs and while tokens are generated.</summary>
public sealed record SteeringPlan(SteeringTensors Prompt, SteeringTensors Generated)
{
    public static SteeringPlan Identity(SteeringShape shape) => new(new SteeringTensors(shape), new SteeringTensors(shape));
}
