using FeatureFlow.Api.V1;
using Grpc.Core;

namespace FeatureFlow.Server.Tests;

/// <summary>Strength semantics: 0 is exactly the unsteered model for every pack and operation; 1 is the term as written.</summary>
public class StrengthTests(ServerFixture f) : IClassFixture<ServerFixture>
{
    private static GenerateRequest Request(params SteeringTerm[] terms)
    {
        var r = new GenerateRequest { Prompt = "Once upon a time", MaxTokens = 40, Temperature = 1, Seed = 17, Steering = new SteeringSpec() };
        r.Steering.Terms.AddRange(terms);
        return r;
    }

    private Task<List<int>> Tokens(GenerateRequest request) => f.Client.TokensAsync(request);

    private static SteeringTerm Raw(SteeringOperation operation, float value, float? strength)
    {
        var rng = new Random((int)operation);
        var term = new SteeringTerm { Hook = "blocks.2.hook_resid_post", Operation = operation, Value = value, Vector = new FeatureVector { Threshold = 0f } };
        term.Vector.Direction.AddRange(Numerics.RandomVector(rng, 64));
        term.Vector.Encoder.AddRange(Numerics.RandomVector(rng, 64));
        if (strength is { } s) term.Strength = s;
        return term;
    }

    [Fact]
    public async Task Strength_0_gives_the_unsteered_tokens_for_every_shipped_pack()
    {
        var unsteered = await Tokens(Request());
        var packs = (await f.Client.ListPacksAsync(new ListPacksRequest())).Packs;
        Assert.True(packs.Count(p => p.Operation == "promote") >= 2, "the shipped promotion packs did not load");
        foreach (var pack in packs)
        {
            Assert.Equal(unsteered, await Tokens(Request(new SteeringTerm { Pack = new PackRef { Name = pack.Name, Strength = 0 } })));
            // Suppression only acts where its feature fires; promotion always moves the text.
            if (pack.Operation == "promote")
                Assert.NotEqual(unsteered, await Tokens(Request(new SteeringTerm { Pack = new PackRef { Name = pack.Name, Strength = 2 } })));
        }
    }

    [Theory]
    [InlineData(SteeringOperation.Add, 6f)]
    [InlineData(SteeringOperation.Rescale, -3f)]
    [InlineData(SteeringOperation.Clamp, 8f)]
    public async Task Strength_0_is_exactly_no_steering_for_each_operation_and_1_is_the_term_as_written(SteeringOperation operation, float value)
    {
        var unsteered = await Tokens(Request());
        Assert.Equal(unsteered, await Tokens(Request(Raw(operation, value, 0f))));
        var full = await Tokens(Request(Raw(operation, value, null)));
        Assert.NotEqual(unsteered, full);
        Assert.Equal(full, await Tokens(Request(Raw(operation, value, 1f))));
    }

    [Fact]
    public async Task A_rescale_at_half_strength_is_the_rescale_halfway_to_1()
    {
        // r = −3 at strength 0.5 is r_eff = 1 + 0.5·(−3 − 1) = −1.
        Assert.Equal(await Tokens(Request(Raw(SteeringOperation.Rescale, -1f, null))), await Tokens(Request(Raw(SteeringOperation.Rescale, -3f, 0.5f))));
    }

    [Fact]
    public async Task A_strength_that_is_not_finite_is_invalid_argument_naming_the_field()
    {
        var e = await Assert.ThrowsAsync<RpcException>(() => Tokens(Request(Raw(SteeringOperation.Add, 1f, float.PositiveInfinity))));
        Assert.Equal(StatusCode.InvalidArgument, e.StatusCode);
        Assert.StartsWith("steering.terms[0].strength:", e.Status.Detail);
    }
}
