using FeatureFlow.Models;
using FeatureFlow.Models.Export;
using FeatureFlow.Steering;

namespace FeatureFlow.Testing;

/// <summary>
/// The heaviest steering a hooked graph takes, for comparing two ways of writing the hooks: at every site an add
/// vector and every slot filled with a random feature (thresholds around the activations' scale, so some fire and
/// some do not; rescale-like α in the even slots, clamp-like β in the odd ones).
/// </summary>
public static class HeavySteering
{
    public static SteeringTensors Random(SteeringShape shape, Random rng)
    {
        var steering = new SteeringTensors(shape);
        foreach (var site in Site.All(shape.Layers))
        {
            Numerics.RandomVector(rng, shape.DModel, 0.3f).CopyTo(steering.AddAt(site));
            for (var slot = 0; slot < shape.SlotsPerSite; slot++)
            {
                steering.SetEncoderRow(site, slot, Numerics.RandomVector(rng, shape.DModel, 0.3f));
                Numerics.RandomVector(rng, shape.DModel, 0.1f).CopyTo(steering.DecoderAt(site, slot));
                steering.Coefficient(site, GraphNames.CoefficientRow.EncoderBias, slot) =
                    0.1f * (rng.NextSingle() - 0.5f);
                steering.Coefficient(site, GraphNames.CoefficientRow.Threshold, slot) = 0.2f * rng.NextSingle();
                steering.Coefficient(site, GraphNames.CoefficientRow.Alpha, slot) = slot % 2 == 0 ? -0.5f : 0f;
                steering.Coefficient(site, GraphNames.CoefficientRow.Beta, slot) = slot % 2 == 0 ? 0f : 0.3f;
            }
        }
        return steering;
    }
}
