using FeatureFlow.Models;
using Row = FeatureFlow.Models.Export.GraphNames.CoefficientRow;

namespace FeatureFlow.Steering.Tests;

public class SteeringCompilerTests
{
    private static readonly SteeringShape Shape = new(Layers: 3, DModel: 4, SlotsPerSite: 2);
    private static readonly SteeringCompiler Compiler = new(Shape);
    private static readonly Site Mid = new(1, SiteKind.MlpOut);

    private static SteeringTerm Term(SteeringOperation op, float value, SteeringScope scope = SteeringScope.All, Site? site = null, float[]? decoder = null, float[]? encoder = null, float threshold = 0f) =>
        new(site ?? Mid, op, value, new FeatureVector(decoder ?? [1, 2, 3, 4], encoder ?? (op == SteeringOperation.Add ? null : [0.5f, 0, 0, -1]), 0.25f, threshold), scope);

    [Fact]
    public void Empty_spec_is_the_identity()
    {
        var plan = Compiler.Compile(SteeringSpec.None);
        Assert.True(plan.Prompt.IsIdentity);
        Assert.True(plan.Generated.IsIdentity);
        Assert.All(plan.Prompt.Coefficients, c => Assert.Equal(0f, c));
    }

    [Fact]
    public void Add_terms_at_one_site_sum_into_its_add_vector_and_nowhere_else()
    {
        var plan = Compiler.Compile(new SteeringSpec([Term(SteeringOperation.Add, 2f), Term(SteeringOperation.Add, -0.5f, decoder: [1, 1, 1, 1])]));
        Assert.Equal([1.5f, 3.5f, 5.5f, 7.5f], plan.Prompt.AddAt(Mid).ToArray());
        Assert.Equal(4, plan.Prompt.Add.Count(v => v != 0));
        Assert.All(plan.Prompt.Decoder, v => Assert.Equal(0f, v));
    }

    [Fact]
    public void Rescale_takes_a_slot_with_alpha_r_minus_one_and_no_beta()
    {
        var plan = Compiler.Compile(new SteeringSpec([Term(SteeringOperation.Rescale, -2f, threshold: 0.1f)]));
        var t = plan.Generated;
        Assert.Equal(-3f, t.Coefficient(Mid, Row.Alpha, 0));
        Assert.Equal(0f, t.Coefficient(Mid, Row.Beta, 0));
        Assert.Equal(0.25f, t.Coefficient(Mid, Row.EncoderBias, 0));
        Assert.Equal(0.1f, t.Coefficient(Mid, Row.Threshold, 0));
        Assert.Equal([0.5f, 0, 0, -1], t.EncoderRow(Mid, 0));
        Assert.Equal(new float[4], t.EncoderRow(Mid, 1));
        Assert.Equal([1f, 2, 3, 4], t.DecoderAt(Mid, 0).ToArray());
    }

    [Fact]
    public void Clamp_is_alpha_minus_one_and_beta_c()
    {
        var plan = Compiler.Compile(new SteeringSpec([Term(SteeringOperation.Rescale, 0f), Term(SteeringOperation.Clamp, 3f)]));
        Assert.Equal(-1f, plan.Prompt.Coefficient(Mid, Row.Alpha, 0));
        Assert.Equal(-1f, plan.Prompt.Coefficient(Mid, Row.Alpha, 1));
        Assert.Equal(3f, plan.Prompt.Coefficient(Mid, Row.Beta, 1));
    }

    [Fact]
    public void Scope_decides_which_tensors_a_term_lands_in()
    {
        var plan = Compiler.Compile(new SteeringSpec([Term(SteeringOperation.Add, 1f, SteeringScope.GeneratedOnly)]));
        Assert.True(plan.Prompt.IsIdentity);
        Assert.False(plan.Generated.IsIdentity);
        plan = Compiler.Compile(new SteeringSpec([Term(SteeringOperation.Add, 1f, SteeringScope.PromptOnly)]));
        Assert.False(plan.Prompt.IsIdentity);
        Assert.True(plan.Generated.IsIdentity);
    }

    public static IEnumerable<object[]> BadTerms() =>
    [
        [Term(SteeringOperation.Add, 1f, decoder: [1, 2, 3]), "steering.terms[0].direction"],
        [Term(SteeringOperation.Add, float.NaN), "steering.terms[0].value"],
        [Term(SteeringOperation.Add, 1f, decoder: [1, float.PositiveInfinity, 0, 0]), "steering.terms[0].direction"],
        [Term(SteeringOperation.Add, 1f, site: new Site(3, SiteKind.AttnOut)), "steering.terms[0].layer"],
        [Term(SteeringOperation.Add, 1f, site: new Site(-1, SiteKind.AttnOut)), "steering.terms[0].layer"],
        [Term(SteeringOperation.Rescale, 0f, encoder: []), "steering.terms[0].encoder"],
        [Term(SteeringOperation.Clamp, 1f, encoder: [1, 2]), "steering.terms[0].encoder"],
        [Term(SteeringOperation.Clamp, 1f, encoder: [float.NaN, 0, 0, 0]), "steering.terms[0].encoder"],
        [Term(SteeringOperation.Rescale, 0f, threshold: -1f), "steering.terms[0].threshold"],
        [Term(SteeringOperation.Rescale, 0f, threshold: float.NaN), "steering.terms[0].threshold"],
    ];

    [Theory]
    [MemberData(nameof(BadTerms))]
    public void Bad_terms_name_their_field(SteeringTerm term, string field)
    {
        var e = Assert.Throws<FieldValidationException>(() => Compiler.Compile(new SteeringSpec([term])));
        Assert.Equal(field, e.Field);
        Assert.StartsWith(field, e.Message);
    }

    [Fact]
    public void More_feature_terms_than_slots_at_a_site_is_an_error_naming_the_term()
    {
        var terms = Enumerable.Range(0, 3).Select(i => Term(SteeringOperation.Rescale, 0f) with { Field = $"steering.terms[{i}]" }).ToArray();
        var e = Assert.Throws<FieldValidationException>(() => Compiler.Compile(new SteeringSpec(terms)));
        Assert.Equal("steering.terms[2]", e.Field);
        Assert.Contains(Mid.HookName, e.Message);
    }
}
