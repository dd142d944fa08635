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
    /// <summary>On shutdown, how long in-flight streams may run on before they are ended with a "shutting down" status.</summary>
    public int DrainSeconds { get; init; } = 30;
    /// <summary>"text" (default) or "json": one JSON object per log line, with the request id as a field.</summary>
    public string LogFormat { get; init; } = "text";
    /// <summary>Write prompts into the request log lines (off: prompts can hold personal data).</summary>
    public bool LogPrompts { get; init; }
    /// <summary>Reload packs when files in the model folder's packs/ change.</summary>
    public bool WatchPacks { get; init; } = true;
    /// <summary>Most arms one Compare may run (arms + sweep strengths); each is a row of the batch.</summary>
    public int MaxCompareArms { get; init; } = 8;
    /// <summary>
    /// API keys, one a line (<c>admin:KEY</c> for an admin key); FEATUREFLOW_API_KEYS and FEATUREFLOW_ADMIN_KEYS add
    /// more (<see cref="Security.ApiKeyStore"/>). Without any key the server binds only to loopback.
    /// </summary>
    public string? ApiKeysFile { get; init; }
    /// <summary>Serve a non-loopback <see cref="Host"/> without API keys (refused at start-up otherwise).</summary>
    public bool InsecureNoAuth { get; init; }
    /// <summary>PEM certificate and private key: with both, both endpoints serve TLS.</summary>
    public string? TlsCertificateFile { get; init; }
    public string? TlsKeyFile { get; init; }
    /// <summary>Request sizes, slow-client timeouts and per-caller limits.</summary>
    public Security.ServerLimits Limits { get; init; } = new();
}
