using System.Numerics.Tensors;
using FeatureFlow.Models;
using FeatureFlow.Models.Export;
using Row = FeatureFlow.Models.Export.GraphNames.CoefficientRow;

namespace FeatureFlow.Steering;

/// <summary>
/// Validates a <see cref="SteeringSpec"/> against a model and compiles it into dense tensors, once per
/// request. Add terms sum into the site's add vector; rescale and clamp terms each take a feature slot.
/// </summary>
public sealed class SteeringCompiler(SteeringShape shape)
{
    public SteeringShape Shape { get; } = shape;

    /// <summary>
    /// The largest component a steering vector may add: beyond it the next RMSNorm's mean of squares overflows
    /// float32 (d·x² > float.MaxValue) and the row's activations can only become infinite.
    /// </summary>
    public float MaxComponent => MathF.Sqrt(float.MaxValue / Shape.DModel);

    public SteeringPlan Compile(SteeringSpec spec)
    {
        var plan = SteeringPlan.Identity(Shape);
        var promptSlots = new int[Shape.Sites];
        var generatedSlots = new int[Shape.Sites];
        foreach (var term in spec.Terms)
        {
            Validate(term);
            if (term.Scope != SteeringScope.GeneratedOnly) Place(term, plan.Prompt, promptSlots);
            if (term.Scope != SteeringScope.PromptOnly) Place(term, plan.Generated, generatedSlots);
        }
        CheckAddedVectors(spec, plan.Prompt);
        CheckAddedVectors(spec, plan.Generated);
        return plan;
    }

    /// <summary>Several add terms at one site can overflow together even when each is in range.</summary>
    private void CheckAddedVectors(SteeringSpec spec, SteeringTensors tensors)
    {
        for (var i = 0; i < Shape.Sites; i++)
        {
            var site = Site.FromIndex(i);
            var largest = TensorPrimitives.MaxMagnitude(tensors.AddAt(site));
            if (float.IsFinite(largest) && MathF.Abs(largest) <= MaxComponent) continue;
            var field = spec.Terms.First(t => t.Site == site && t.Operation == SteeringOperation.Add).Field;
            throw new FieldValidationException(field,
                $"the add terms at {site} reach {MathF.Abs(largest):G3} in one component, more than {MaxComponent:G3}, past which the activations overflow");
        }
    }

    private void Place(SteeringTerm term, SteeringTensors tensors, int[] slotsUsed)
    {
        var site = term.Site;
        var v = term.Feature.Decoder;
        if (term.Operation == SteeringOperation.Add)
        {
            var add = tensors.AddAt(site);
            var s = term.Value * term.Strength;
            for (var i = 0; i < add.Length; i++) add[i] += s * v[i];
            return;
        }
        var slot = slotsUsed[site.Index]++;
        if (slot >= Shape.SlotsPerSite)
            throw new FieldValidationException(term.Field, $"site {site} already holds {Shape.SlotsPerSite} rescale/clamp terms, the most this model's graph has slots for");
        tensors.SetEncoderRow(site, slot, term.Feature.Encoder);
        v.AsSpan().CopyTo(tensors.DecoderAt(site, slot));
        tensors.Coefficient(site, Row.EncoderBias, slot) = term.Feature.EncoderBias;
        tensors.Coefficient(site, Row.Threshold, slot) = term.Feature.Threshold;
        // Rescale: strength·(r − 1)·a·v. Clamp: strength·(c − a)·v = −strength·a·v + strength·c·v. Strength 0 gives
        // α = β = 0: the slot adds exactly zero.
        (tensors.Coefficient(site, Row.Alpha, slot), tensors.Coefficient(site, Row.Beta, slot)) = term.Operation switch
        {
            SteeringOperation.Rescale => (term.Strength * (term.Value - 1f), 0f),
            SteeringOperation.Clamp => (-term.Strength, term.Strength * term.Value),
            _ => throw new ArgumentOutOfRangeException(nameof(term)),
        };
    }

    private void Validate(SteeringTerm term)
    {
        var f = term.Field;
        CheckSite(term.Site, term.SiteField ?? $"{f}.layer");
        RequireFinite($"{f}.value", term.Value);
        RequireFinite($"{f}.strength", term.Strength);
        RequireVector($"{f}.direction", term.Feature.Decoder);
        // What a term writes along v: s·strength for add, strength·c for clamp, strength·(r − 1)·a for rescale.
        var scale = term.Operation switch
        {
            SteeringOperation.Add or SteeringOperation.Clamp => term.Value * term.Strength,
            _ => term.Strength * (term.Value - 1f),
        };
        var reach = MathF.Abs(scale) * MathF.Abs(TensorPrimitives.MaxMagnitude(term.Feature.Decoder));
        if (!(reach <= MaxComponent))
            throw new FieldValidationException($"{f}.value",
                $"value × direction reaches {reach:G3} in one component, more than {MaxComponent:G3}, past which the activations overflow");
        if (term.Operation == SteeringOperation.Add) return;
        if (term.Feature.Encoder is null || term.Feature.Encoder.Length == 0)
            throw new FieldValidationException($"{f}.encoder", $"{term.Operation.ToString().ToLowerInvariant()} needs the feature's encoder row (d_model = {Shape.DModel} values)");
        RequireVector($"{f}.encoder", term.Feature.Encoder);
        RequireFinite($"{f}.encoder_bias", term.Feature.EncoderBias);
        RequireFinite($"{f}.threshold", term.Feature.Threshold);
        if (term.Feature.Threshold < 0f)
            throw new FieldValidationException($"{f}.threshold", $"JumpReLU threshold must be ≥ 0 (0 is ReLU), got {term.Feature.Threshold}");
    }

    /// <summary>The site exists in this model; <paramref name="field"/> is the request field that named it.</summary>
    public void CheckSite(Site site, string field)
    {
        if (site.Layer < 0 || site.Layer >= Shape.Layers)
            throw new FieldValidationException(field, $"layer {site.Layer} does not exist (the model has layers 0..{Shape.Layers - 1})");
        if (!Enum.IsDefined(site.Kind))
            throw new FieldValidationException(field, $"unknown site kind {(int)site.Kind}");
    }

    private void RequireVector(string field, float[] vector)
    {
        if (vector.Length != Shape.DModel)
            throw new FieldValidationException(field, $"has {vector.Length} values; the model's d_model is {Shape.DModel}");
        for (var i = 0; i < vector.Length; i++)
            if (!float.IsFinite(vector[i])) throw new FieldValidationException(field, $"value [{i}] is {vector[i]}; every value must be finite");
    }

    private static void RequireFinite(string field, float value)
    {
        if (!float.IsFinite(value)) throw new FieldValidationException(field, $"is {value}; it must be finite");
    }
}
