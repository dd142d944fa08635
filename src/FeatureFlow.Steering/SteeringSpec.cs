using FeatureFlow.Models;

namespace FeatureFlow.Steering;

public enum SteeringOperation
{
    /// <summary>h ← h + s·v (promotion).</summary>
    Add,
    /// <summary>h ← h + (r − 1)·a(h)·v: r = 0 removes the feature, r &lt; 0 inverts it.</summary>
    Rescale,
    /// <summary>h ← h + (c − a(h))·v: pins the feature's activation at c.</summary>
    Clamp,
}

/// <summary>Which positions a term acts on.</summary>
public enum SteeringScope
{
    /// <summary>Every prompt token and every generated token.</summary>
    All,
    PromptOnly,
    GeneratedOnly,
}

/// <summary>
/// A feature for rescale and clamp: the SAE encoder row e, bias b and JumpReLU threshold θ that give its
/// activation a(h) = (e·h + b)·[e·h + b &gt; θ] (θ = 0 is ReLU), and the decoder row v it writes along.
/// </summary>
public sealed record FeatureVector(float[] Decoder, float[]? Encoder = null, float EncoderBias = 0f, float Threshold = 0f);

/// <summary>One steering term at one site. <see cref="Field"/> is the request path used in error messages.</summary>
public sealed record SteeringTerm(Site Site, SteeringOperation Operation, float Value, FeatureVector Feature, SteeringScope Scope = SteeringScope.All)
{
    public string Field { get; init; } = "steering.terms[0]";
    /// <summary>The request field that named the site (<c>….hook</c> or <c>….layer</c>), for errors about the site.</summary>
    public string? SiteField { get; init; }

    /// <summary>
    /// How much of the term applies: 0 is exactly no steering, 1 the term as written, values between interpolate.
    /// Add: s·strength. Rescale: r_eff = 1 + strength·(r − 1). Clamp: a partial pull toward c, h + strength·(c − a)·v.
    /// </summary>
    public float Strength { get; init; } = 1f;
}

public sealed record SteeringSpec(IReadOnlyList<SteeringTerm> Terms)
{
    public static readonly SteeringSpec None = new([]);
}
