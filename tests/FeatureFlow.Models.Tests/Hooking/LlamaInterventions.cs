using FeatureFlow.Steering;
using Row = FeatureFlow.Models.Export.GraphNames.CoefficientRow;

namespace FeatureFlow.Models.Tests.Hooking;

/// <summary>
/// The steering the Llama hooking tests compare graphs with: at one site, either an add term or one rescale/clamp-like
/// slot term (encoder row, threshold, α, β, decoder row), random but fixed by the seed.
/// </summary>
internal static class LlamaInterventions
{
    public static TheoryData<SiteKind, bool> EveryKind()
    {
        var data = new TheoryData<SiteKind, bool>();
        foreach (var kind in Enum.GetValues<SiteKind>())
            foreach (var slotTerm in new[] { false, true }) data.Add(kind, slotTerm);
        return data;
    }

    public static SteeringTensors At(SteeringShape shape, Site site, bool slotTerm, int seed)
    {
        var steering = new SteeringTensors(shape);
        var rng = new Random(seed + site.Index);
        if (slotTerm)
        {
            steering.SetEncoderRow(site, 0, Numerics.RandomVector(rng, shape.DModel, 0.3f));
            Numerics.RandomVector(rng, shape.DModel, 0.5f).CopyTo(steering.DecoderAt(site, 0));
            steering.Coefficient(site, Row.Threshold, 0) = 0.1f;
            steering.Coefficient(site, Row.Alpha, 0) = 2f;
            steering.Coefficient(site, Row.Beta, 0) = -0.3f;
        }
        else
        {
            Numerics.RandomVector(rng, shape.DModel, 1f).CopyTo(steering.AddAt(site));
        }
        return steering;
    }
}
