using FeatureFlow.Engine;
using Prometheus;

namespace FeatureFlow.Server.Observability;

/// <summary>
/// Prometheus metrics (prometheus-net: a small, long-maintained client with an ASP.NET Core exporter; OpenTelemetry's
/// Prometheus exporter is still a beta package here). One registry per server, so hosts in one process (tests)
/// never share counters. Engine figures are read on each scrape rather than pushed per step.
/// </summary>
public sealed class ServerMetrics
{
    private readonly Counter _requests, _tokens, _packRequests, _armRequests;
    private readonly Histogram _timeToFirstToken, _interToken;

    public ServerMetrics(GenerationEngine engine)
    {
        Registry = Metrics.NewCustomRegistry();
        var factory = Metrics.WithCustomRegistry(Registry);
        _requests = factory.CreateCounter("featureflow_requests_total", "Requests by API, method and final status.", "api", "method", "status");
        _tokens = factory.CreateCounter("featureflow_generated_tokens_total", "Tokens generated.");
        _packRequests = factory.CreateCounter("featureflow_pack_requests_total", "Requests that applied a steering pack, by pack.", "pack");
        _armRequests = factory.CreateCounter("featureflow_experiment_requests_total", "Requests served by an experiment arm.", "experiment", "arm");
        _timeToFirstToken = factory.CreateHistogram("featureflow_time_to_first_token_seconds", "From submission to the first token.",
            new HistogramConfiguration { Buckets = Histogram.ExponentialBuckets(0.0005, 2, 16) });
        _interToken = factory.CreateHistogram("featureflow_inter_token_latency_seconds", "Between consecutive tokens of one request.",
            new HistogramConfiguration { Buckets = Histogram.ExponentialBuckets(0.0001, 2, 16) });
        var queued = factory.CreateGauge("featureflow_queue_depth", "Requests waiting for a row.");
        var queuedTokens = factory.CreateGauge("featureflow_queued_tokens", "Prompt + max_tokens of the waiting requests.");
        var running = factory.CreateGauge("featureflow_running_rows", "Rows in the running batch.");
        var kvInUse = factory.CreateGauge("featureflow_kv_tokens_in_use", "Tokens the running rows' KV cache holds.");
        var kvReserved = factory.CreateGauge("featureflow_kv_tokens_reserved", "Tokens reserved by running rows (prompt + max_tokens).");
        var kvBudget = factory.CreateGauge("featureflow_kv_token_budget", "The KV token budget.");
        var steps = factory.CreateGauge("featureflow_decode_steps", "Decode steps run (a counter read from the engine).");
        var plainSteps = factory.CreateGauge("featureflow_plain_decode_steps",
            "Decode steps that ran the graph without hooks: no row steered or read a site out (a counter).");
        var rows = factory.CreateGauge("featureflow_decode_rows", "Rows summed over decode steps; rate(rows) / rate(steps) is the batch size.");
        Registry.AddBeforeCollectCallback(() =>
        {
            var f = engine.Figures();
            queued.Set(f.QueuedRequests);
            queuedTokens.Set(f.QueuedTokens);
            running.Set(f.RunningRows);
            kvInUse.Set(f.KvTokensInUse);
            kvReserved.Set(f.KvTokensReserved);
            kvBudget.Set(f.KvTokenBudget);
            steps.Set(f.DecodeSteps);
            plainSteps.Set(f.PlainDecodeSteps);
            rows.Set(f.DecodeRows);
        });
        engine.TokenTimed += (first, seconds) =>
        {
            _tokens.Inc();
            (first ? _timeToFirstToken : _interToken).Observe(seconds);
        };
    }

    public CollectorRegistry Registry { get; }

    public void Request(string api, string method, string status) => _requests.WithLabels(api, method, status).Inc();

    public void Steering(IEnumerable<string> packs, string? experiment, string? arm)
    {
        foreach (var pack in packs) _packRequests.WithLabels(pack).Inc();
        if (experiment is not null && arm is not null) _armRequests.WithLabels(experiment, arm).Inc();
    }
}
