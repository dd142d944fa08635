using FeatureFlow.Api.V1;
using FeatureFlow.Engine;
using FeatureFlow.Steering;
using FeatureFlow.Steering.Packs;

namespace FeatureFlow.Server;

/// <summary>Generations submitted for one API request: the rows, how to read them out, and the experiment arm if any.</summary>
public sealed record SubmittedGeneration(IReadOnlyList<Generation> Rows, FeatureReadoutPlan Readout, string? Experiment, string? Arm,
    string? SubjectId, string RequestId) : IDisposable
{
    public long StartedAt { get; } = System.Diagnostics.Stopwatch.GetTimestamp();

    /// <summary>The caller's stream and token reservation, ended (unused tokens refunded) with the rows.</summary>
    public Security.CallerLimiter.Lease? Lease { get; init; }

    public void Dispose()
    {
        foreach (var row in Rows) row.Dispose();
        Lease?.End(Rows.Sum(r => (long)r.CompletionTokens));
    }
}

/// <summary>
/// The one path from a <see cref="GenerateRequest"/> to running rows, shared by gRPC and the OpenAI endpoint: the
/// experiment's arm (when the request names one), mapping and validation, then submission. Refusals are thrown as
/// domain exceptions; each transport turns them into its own status.
/// </summary>
public sealed class GenerationPipeline(GenerationEngine engine, SteeringCatalog catalog, ExperimentService experiments,
    Observability.ServerMetrics metrics, ServerLifecycle lifecycle, Security.RequestLimits limits, Security.CallerLimiter callers,
    ServerOptions options, ILogger<GenerationPipeline> logger)
{
    /// <summary>
    /// Submits <paramref name="copies"/> rows of the request (seed, seed + 1, …) as one batch, or none, within the size
    /// limits and <paramref name="caller"/>'s stream and token limits.
    /// </summary>
    public SubmittedGeneration Submit(GenerateRequest request, Security.Caller caller, int copies = 1)
    {
        lifecycle.EnsureAccepting();
        limits.Check(request);
        string? arm = null;
        Api.V1.SteeringSpec? armSteering = null;
        if (request.Experiment.Length > 0)
        {
            if (request.Steering is { Terms.Count: > 0 })
                throw new FieldValidationException("steering", "a request in an experiment takes its steering from its arm; leave steering empty");
            (arm, armSteering) = experiments.Assign(request.Experiment, request.SubjectId);
        }
        var (domain, readout) = RequestMapper.ToDomain(request, engine, catalog, armSteering);
        domain = limits.Apply(domain, request.HasMaxTokens, request.PromptTokenIds.Count > 0);
        var rows = Enumerable.Range(0, copies)
            .Select(i => domain with { Sampling = domain.Sampling with { Seed = domain.Sampling.Seed + (ulong)i } })
            .ToArray();
        var lease = callers.Admit(caller, domain.MaxTokens, copies);
        SubmittedGeneration submitted;
        try
        {
            submitted = new SubmittedGeneration(engine.SubmitAll(rows), readout, request.Experiment.Length > 0 ? request.Experiment : null,
                arm, request.SubjectId, Guid.NewGuid().ToString("N")) { Lease = lease };
        }
        catch
        {
            lease.End(0); // refused by the engine: nothing ran
            throw;
        }
        var packs = (armSteering ?? request.Steering)?.Terms.Where(t => t.Pack is not null).Select(t => t.Pack.Name.Split('@')[0]).ToArray() ?? [];
        metrics.Steering(packs, submitted.Experiment, arm);
        // Prompt text stays out of the log unless the operator turns it on.
        logger.LogInformation("request {RequestId} from {Caller}: {Rows} rows, {PromptTokens} prompt tokens, max_tokens {MaxTokens}, " +
            "{Terms} steering terms, packs [{Packs}], experiment {Experiment} arm {Arm}{Prompt}", submitted.RequestId, caller.Id, copies,
            domain.PromptIds.Length, domain.MaxTokens, domain.Steering.Terms.Count, string.Join(",", packs), submitted.Experiment, arm,
            options.LogPrompts ? $", prompt {System.Text.Json.JsonSerializer.Serialize(request.Prompt)}" : "");
        return submitted;
    }

    /// <summary>A Compare mapped within the size limits (all arms share the prompt and max_tokens).</summary>
    public (IReadOnlyList<RequestMapper.CompareArm> Arms, FeatureReadoutPlan Readout) MapCompare(CompareRequest request, int maxArms)
    {
        limits.Check(request);
        var (arms, readout) = RequestMapper.ToDomain(request, engine, catalog, maxArms);
        var promptFromIds = request.PromptTokenIds.Count > 0;
        return (arms.Select(a => a with { Request = limits.Apply(a.Request, request.HasMaxTokens, promptFromIds) }).ToArray(), readout);
    }

    /// <summary>Queues a Compare's arms together for <paramref name="caller"/> (one stream, a row per arm), or none.</summary>
    public (IReadOnlyList<Generation> Rows, Security.CallerLimiter.Lease Lease) SubmitArms(IReadOnlyList<RequestMapper.CompareArm> arms,
        Security.Caller caller)
    {
        var lease = callers.Admit(caller, arms[0].Request.MaxTokens, arms.Count);
        try
        {
            return (engine.SubmitAll(arms.Select(a => a.Request).ToArray()), lease);
        }
        catch
        {
            lease.End(0);
            throw;
        }
    }

    /// <summary>Records a finished experiment request's tokens and latency (a no-op outside experiments).</summary>
    public void Finished(SubmittedGeneration submitted, int tokens)
    {
        var elapsed = System.Diagnostics.Stopwatch.GetElapsedTime(submitted.StartedAt);
        logger.LogInformation("request {RequestId} finished: {Tokens} tokens in {Milliseconds:F0} ms", submitted.RequestId, tokens, elapsed.TotalMilliseconds);
        if (submitted.Arm is null) return;
        experiments.RecordRequest(submitted.Experiment!, submitted.Arm, submitted.RequestId, submitted.SubjectId ?? "", tokens,
            System.Diagnostics.Stopwatch.GetElapsedTime(submitted.StartedAt));
    }
}
