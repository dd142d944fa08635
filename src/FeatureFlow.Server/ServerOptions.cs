using FeatureFlow.Engine;

namespace FeatureFlow.Server;

public sealed record ServerOptions
{
    public const string DefaultModelDirectory = "models/stories260k";

    public string ModelDirectory { get; init; } = DefaultModelDirectory;
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>0 picks a free port (tests read it from <see cref="ServerHost.Address"/>).</summary>
    public int Port { get; init; } = 50051;
    /// <summary>
    /// The OpenAI-compatible HTTP/1.1 endpoint (and /healthz, /readyz); 0 picks a free port, null (the default for
    /// embedding hosts and tests) turns it off. <c>featureflow serve</c> defaults to 8080.
    /// </summary>
    public int? HttpPort { get; init; }
    public EngineOptions Engine { get; init; } = new();
    /// <summary>The experiments config (YAML or JSON, docs/experiments.md); null: no experiments. Reloaded when it changes.</summary>
    public string? ExperimentsConfig { get; init; }
    /// <summary>Where experiment figures persist (SQLite). Null: experiments.db in the working directory when a config is set.</summary>
    public string? ExperimentsDatabase { get; init; }
    /// <summary>Reload packs when files in the model folder's packs/ change.</summary>
    public bool WatchPacks { get; init; } = true;
    /// <summary>Most arms one Compare may run (arms + sweep strengths); each is a row of the batch.</summary>
    public int MaxCompareArms { get; init; } = 8;
}
