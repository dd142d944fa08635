using FeatureFlow.Engine;
using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace FeatureFlow.Server;

/// <summary>
/// Readiness and graceful drain. Ready once the model is loaded and the server listens; on shutdown (SIGTERM) it is
/// not ready at once, new requests are refused with UNAVAILABLE / 503, in-flight streams run on for up to the drain
/// time, and whatever is still running then ends with a clear "shutting down" status before the process exits 0.
/// </summary>
public sealed class ServerLifecycle(GenerationEngine engine, ServerOptions options, ILogger<ServerLifecycle> logger)
    : IHealthCheck
{
    private volatile bool _ready;
    private volatile bool _draining;

    public bool Ready => _ready && !_draining;
    public bool Draining => _draining;

    public void Started() => _ready = true;

    /// <summary>Called when the host starts stopping: stop taking work, and end what is left after the drain time.</summary>
    public void Stopping()
    {
        _draining = true;
        var drain = TimeSpan.FromSeconds(options.DrainSeconds);
        var figures = engine.Figures();
        logger.LogInformation("shutting down: not ready; draining {Rows} running and {Queued} queued generations for up to {Seconds} s",
            figures.RunningRows, figures.QueuedRequests, drain.TotalSeconds);
        _ = Task.Delay(drain).ContinueWith(_ =>
        {
            var left = engine.Figures();
            if (left.RunningRows + left.QueuedRequests == 0) return;
            logger.LogWarning("drain time over: ending {Rows} running and {Queued} queued generations", left.RunningRows, left.QueuedRequests);
            engine.EndAll(new EngineShutdownException($"the server is shutting down and its drain time ({drain.TotalSeconds:0} s) ran out"));
        }, TaskScheduler.Default);
    }

    /// <summary>Refuses new work while draining (mapped to UNAVAILABLE / 503 by the transports).</summary>
    public void EnsureAccepting()
    {
        if (_draining) throw new EngineShutdownException("the server is shutting down and takes no new requests");
    }

    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default) =>
        Task.FromResult(Ready ? HealthCheckResult.Healthy() : HealthCheckResult.Unhealthy(_draining ? "draining" : "starting"));
}
