using FeatureFlow.Api.V1;
using FeatureFlow.Engine;
using FeatureFlow.Models;
using FeatureFlow.Models.Tokenization;
using FeatureFlow.Steering;
using FeatureFlow.Steering.Packs;
using ApiOperation = FeatureFlow.Api.V1.SteeringOperation;
using ApiScope = FeatureFlow.Api.V1.SteeringScope;
using DomainOperation = FeatureFlow.Steering.SteeringOperation;
using DomainScope = FeatureFlow.Steering.SteeringScope;
using SteeringSpec = FeatureFlow.Steering.SteeringSpec;
using SteeringTerm = FeatureFlow.Steering.SteeringTerm;
using FeatureVector = FeatureFlow.Steering.FeatureVector;
using ApiSiteKind = FeatureFlow.Api.V1.SiteKind;

namespace FeatureFlow.Server;

/// <summary>Wire messages → domain requests. Shape errors are reported with the proto field path.</summary>
public static class RequestMapper
{
    /// <summary>What mapping a request needs from the model that will run it (our engine or the GenAI backend).</summary>
    public sealed record ModelContext(SteeringCompiler Compiler, ITokenizer Tokenizer, int ContextLength, int DefaultMaxTokens)
    {
        public static ModelContext Of(GenerationEngine engine) =>
            new(engine.Compiler, engine.Tokenizer, engine.Architecture.ContextLength, engine.Options.DefaultMaxTokens);
    }

    /// <summary>A Generate request without its experiment (the server resolves that first and passes the arm's steering).</summary>
    public static (GenerationRequest Request, FeatureReadoutPlan Readout) ToDomain(GenerateRequest r, GenerationEngine engine,
        SteeringCatalog catalog, Api.V1.SteeringSpec? steering = null) => ToDomain(r, ModelContext.Of(engine), catalog, steering);

    public static (GenerationRequest Request, FeatureReadoutPlan Readout) ToDomain(GenerateRequest r, ModelContext model,
        SteeringCatalog catalog, Api.V1.SteeringSpec? steering = null)
    {
        var readout = FeatureReadoutPlan.Resolve(r.Readout, [], catalog, model.Compiler);
        var request = Sampled(new Sampling(r.Prompt, r.PromptTokenIds, r.HasMaxTokens ? r.MaxTokens : null, r.HasTemperature ? r.Temperature : null,
            r.HasTopP ? r.TopP : null, r.HasTopK ? r.TopK : null, r.HasSeed ? r.Seed : null, r.Stop), model) with
        {
            Steering = ToDomain(steering ?? r.Steering, catalog, model.Compiler),
            Readout = readout.Sites,
            TopLogProbs = r.TopLogprobs,
        };
        return (request, readout);
    }

    /// <summary>One arm of a Compare: its label and request. Every arm shares the prompt, sampling and seed.</summary>
    public sealed record CompareArm(string Label, GenerationRequest Request);

    public static (IReadOnlyList<CompareArm> Arms, FeatureReadoutPlan Readout) ToDomain(CompareRequest r, GenerationEngine engine,
        SteeringCatalog catalog, int maxArms)
    {
        var readout = FeatureReadoutPlan.Resolve(r.Readout, r.Watch, catalog, engine.Compiler);
        // One seed for all arms, fixed here so that a random one is still shared.
        var seed = r.HasSeed ? r.Seed : (ulong)Random.Shared.NextInt64();
        var common = Sampled(new Sampling(r.Prompt, r.PromptTokenIds, r.HasMaxTokens ? r.MaxTokens : null, r.HasTemperature ? r.Temperature : null,
            r.HasTopP ? r.TopP : null, r.HasTopK ? r.TopK : null, seed, r.Stop), ModelContext.Of(engine)) with { Readout = readout.Sites };
        var specs = new List<(string Label, SteeringSpec Spec)>();
        for (var i = 0; i < r.Arms.Count; i++)
            specs.Add((r.Arms[i].Terms.Count == 0 ? "default" : $"arms[{i}]", ToDomain(r.Arms[i], catalog, engine.Compiler, $"arms[{i}]")));
        if (r.Sweep is { } sweep)
        {
            if (sweep.Strengths.Count == 0) throw new FieldValidationException("sweep.strengths", "a sweep needs at least one strength");
            if (sweep.TargetCase == StrengthSweep.TargetOneofCase.None) throw new FieldValidationException("sweep.pack", "a sweep needs a pack or a term");
            for (var i = 0; i < sweep.Strengths.Count; i++)
            {
                var strength = sweep.Strengths[i];
                if (!float.IsFinite(strength)) throw new FieldValidationException($"sweep.strengths[{i}]", $"is {strength}; it must be finite");
                var term = sweep.TargetCase == StrengthSweep.TargetOneofCase.Pack
                    ? new Api.V1.SteeringTerm { Pack = new PackRef { Name = sweep.Pack.Name, Strength = strength } }
                    : sweep.Term.Clone();
                if (sweep.TargetCase == StrengthSweep.TargetOneofCase.Term)
                {
                    if (term.FeatureCase == Api.V1.SteeringTerm.FeatureOneofCase.Pack)
                        throw new FieldValidationException("sweep.term.pack", "sweep a pack with sweep.pack");
                    term.Strength = strength;
                }
                var label = sweep.TargetCase == StrengthSweep.TargetOneofCase.Pack
                    ? FormattableString.Invariant($"pack {sweep.Pack.Name} @ {strength}")
                    : FormattableString.Invariant($"term @ {strength}");
                var field = sweep.TargetCase == StrengthSweep.TargetOneofCase.Pack ? "sweep" : "sweep.term";
                specs.Add((label, new SteeringSpec(ToDomain(term, field, catalog, engine.Compiler).ToArray())));
            }
        }
        if (specs.Count == 0) throw new FieldValidationException("arms", "give at least one arm or a sweep");
        if (specs.Count > maxArms)
            throw new FieldValidationException("arms", $"{specs.Count} arms (arms + sweep strengths) exceed the server's limit of {maxArms}");
        return (specs.Select(a => new CompareArm(a.Label, common with { Steering = a.Spec })).ToArray(), readout);
    }

    private sealed record Sampling(string Prompt, IList<int> PromptIds, int? MaxTokens, float? Temperature, float? TopP, int? TopK, ulong? Seed,
        IList<string> Stop);

    /// <summary>Prompt and sampling with the server's defaults for unset fields; no steering yet.</summary>
    private static GenerationRequest Sampled(Sampling r, ModelContext model)
    {
        if (r.Prompt.Length > 0 && r.PromptIds.Count > 0)
            throw new FieldValidationException("prompt_token_ids", "give either prompt or prompt_token_ids, not both");
        var promptIds = r.PromptIds.Count > 0 ? r.PromptIds.ToArray() : model.Tokenizer.Encode(r.Prompt, addBos: true);
        var room = model.ContextLength - promptIds.Length;
        return new GenerationRequest
        {
            PromptIds = promptIds,
            MaxTokens = r.MaxTokens ?? Math.Clamp(model.DefaultMaxTokens, 1, Math.Max(1, room)),
            Sampling = new SamplingOptions
            {
                Temperature = r.Temperature ?? 1f,
                TopP = r.TopP ?? 1f,
                TopK = r.TopK ?? 0,
                Seed = r.Seed ?? (ulong)Random.Shared.NextInt64(),
            },
            Stop = r.Stop.ToArray(),
        };
    }

    public static SteeringSpec ToDomain(Api.V1.SteeringSpec? spec, SteeringCatalog catalog, SteeringCompiler compiler, string field = "steering")
    {
        if (spec is null || spec.Terms.Count == 0) return SteeringSpec.None;
        return new SteeringSpec(spec.Terms.SelectMany((t, i) => ToDomain(t, $"{field}.terms[{i}]", catalog, compiler)).ToArray());
    }

    private static IEnumerable<SteeringTerm> ToDomain(Api.V1.SteeringTerm t, string field, SteeringCatalog catalog, SteeringCompiler compiler)
    {
        var scope = t.Scope switch
        {
            ApiScope.Unspecified or ApiScope.All => DomainScope.All,
            ApiScope.Prompt => DomainScope.PromptOnly,
            ApiScope.Generated => DomainScope.GeneratedOnly,
            _ => throw new FieldValidationException($"{field}.scope", $"unknown scope {t.Scope}"),
        };
        if (t.FeatureCase == Api.V1.SteeringTerm.FeatureOneofCase.Pack)
        {
            if (t.Hook.Length > 0 || t.Site != ApiSiteKind.Unspecified || t.Layer != 0 || t.Operation != ApiOperation.Unspecified || t.Value != 0f || t.HasStrength)
                throw new FieldValidationException($"{field}.pack", "a pack term takes only pack (name, strength) and scope: the pack's terms carry their own sites, operations and values");
            var pack = catalog.Packs.Get(t.Pack.Name, $"{field}.pack.name");
            var strength = t.Pack.HasStrength ? t.Pack.Strength : pack.Metadata.DefaultStrength;
            if (!float.IsFinite(strength)) throw new FieldValidationException($"{field}.pack.strength", $"is {strength}; it must be finite");
            return pack.At(strength, scope, field).ToArray();
        }
        var operation = t.Operation switch
        {
            ApiOperation.Add => DomainOperation.Add,
            ApiOperation.Rescale => DomainOperation.Rescale,
            ApiOperation.Clamp => DomainOperation.Clamp,
            _ => throw new FieldValidationException($"{field}.operation", $"must be ADD, RESCALE or CLAMP, got {t.Operation}"),
        };
        var (site, siteField) = ResolveSite(t, field);
        // Before the SAE lookup, so a layer that does not exist is reported as such.
        compiler.CheckSite(site, siteField);
        var feature = t.FeatureCase switch
        {
            Api.V1.SteeringTerm.FeatureOneofCase.Vector => new FeatureVector(t.Vector.Direction.ToArray(), t.Vector.Encoder.Count > 0 ? t.Vector.Encoder.ToArray() : null, t.Vector.EncoderBias, t.Vector.Threshold),
            Api.V1.SteeringTerm.FeatureOneofCase.SaeFeature => catalog.SaeFeature(site, t.SaeFeature.Index, $"{field}.sae_feature"),
            _ => throw new FieldValidationException($"{field}.vector", "the term names no feature: give vector, pack or sae_feature"),
        };
        return [new SteeringTerm(site, operation, t.Value, feature, scope) { Field = field, SiteField = siteField, Strength = t.HasStrength ? t.Strength : 1f }];
    }

    private static (Site Site, string Field) ResolveSite(Api.V1.SteeringTerm t, string field)
    {
        if (t.Hook.Length > 0)
        {
            var hook = $"{field}.hook";
            if (t.Site != ApiSiteKind.Unspecified || t.Layer != 0)
                throw new FieldValidationException(hook, "give either hook or layer + site, not both");
            return Site.TryParse(t.Hook, out var site, out var error) ? (site, hook) : throw new FieldValidationException(hook, error);
        }
        var kind = t.Site switch
        {
            ApiSiteKind.AttnOut => Models.SiteKind.AttnOut,
            ApiSiteKind.MlpOut => Models.SiteKind.MlpOut,
            ApiSiteKind.ResidPost => Models.SiteKind.ResidPost,
            ApiSiteKind.Unspecified => throw new FieldValidationException($"{field}.site", "name the site: hook, or layer + site (ATTN_OUT, MLP_OUT or RESID_POST)"),
            _ => throw new FieldValidationException($"{field}.site", $"unknown site {t.Site}"),
        };
        return (new Site(t.Layer, kind), $"{field}.layer");
    }

    /// <summary>
    /// One streamed update as the wire message; finish reason and usage only on the last. Site values become
    /// feature activations through <paramref name="readout"/> (watched features summed into <paramref name="watchedSums"/>).
    /// </summary>
    public static GenerateResponse ToApi(GenerationUpdate u, FeatureReadoutPlan? readout = null, double[]? watchedSums = null)
    {
        var response = new GenerateResponse { Text = u.Text };
        response.TokenIds.AddRange(u.TokenIds);
        response.TokenLogprobs.AddRange(u.LogProbs);
        foreach (var top in u.TopLogProbs)
        {
            var alternatives = new TokenAlternatives();
            alternatives.TokenIds.AddRange(top.Select(t => t.Token));
            alternatives.Logprobs.AddRange(top.Select(t => t.LogProb));
            response.TokenTopLogprobs.Add(alternatives);
        }
        if (readout is { IsEmpty: false })
            foreach (var values in u.SiteValues) response.TokenFeatures.Add(readout.Encode(values, watchedSums));
        if (u.Finish is { } finish)
        {
            response.FinishReason = ToApi(finish);
            response.Usage = new TokenUsage { PromptTokens = u.Usage!.PromptTokens, CompletionTokens = u.Usage.CompletionTokens };
        }
        return response;
    }

    public static Api.V1.FinishReason ToApi(Engine.FinishReason reason) => reason switch
    {
        Engine.FinishReason.Length => Api.V1.FinishReason.Length,
        Engine.FinishReason.Stop => Api.V1.FinishReason.Stop,
        Engine.FinishReason.Cancelled => Api.V1.FinishReason.Cancelled,
        Engine.FinishReason.Error => Api.V1.FinishReason.Error,
        _ => Api.V1.FinishReason.Unspecified,
    };
}
