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

    public void Dispose()
    {
        foreach (var row in Rows) row.Dispose();
    }
}

/// <summary>
/// The one path from a <see cref="GenerateRequest"/> to running rows, shared by gRPC and the OpenAI endpoint: the
/// experiment's arm (when the request names one), mapping and validation, then submission. Refusals are thrown as
/// domain exceptions; each transport turns them into its own status.
/// </summary>
public sealed class GenerationPipeline(GenerationEngine engine, SteeringCatalog catalog, ExperimentService experiments,
    Observability.ServerMetrics metrics)
{
    /// <summary>Submits <paramref name="copies"/> rows of the request (seed, seed + 1, …) as one batch, or none.</summary>
    public SubmittedGeneration Submit(GenerateRequest request, int copies = 1)
    {
        string? arm = null;
        Api.V1.SteeringSpec? armSteering = null;
        if (request.Experiment.Length > 0)
        {
            if (request.Steering is { Terms.Count: > 0 })
                throw new FieldValidationException("steering", "a request in an experiment takes its steering from its arm; leave steering empty");
            (arm, armSteering) = experiments.Assign(request.Experiment, request.SubjectId);
        }
        var (domain, readout) = RequestMapper.ToDomain(request, engine, catalog, armSteering);
        var rows = Enumerable.Range(0, copies)
            .Select(i => domain with { Sampling = domain.Sampling with { Seed = domain.Sampling.Seed + (ulong)i } })
            .ToArray();
        var submitted = new SubmittedGeneration(engine.SubmitAll(rows), readout, request.Experiment.Length > 0 ? request.Experiment : null, arm,
            request.SubjectId, Guid.NewGuid().ToString("N"));
        var packs = (armSteering ?? request.Steering)?.Terms.Where(t => t.Pack is not null).Select(t => t.Pack.Name.Split('@')[0]) ?? [];
        metrics.Steering(packs, submitted.Experiment, arm);
        return submitted;
    }

    /// <summary>Records a finished experiment request's tokens and latency (a no-op outside experiments).</summary>
    public void Finished(SubmittedGeneration submitted, int tokens)
    {
        if (submitted.Arm is null) return;
        experiments.RecordRequest(submitted.Experiment!, submitted.Arm, submitted.RequestId, submitted.SubjectId ?? "", tokens,
            System.Diagnostics.Stopwatch.GetElapsedTime(submitted.StartedAt));
    }
}
