using FeatureFlow.Engine;
using FeatureFlow.Models.Folder;
using FeatureFlow.Steering.Packs;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Prometheus;

namespace FeatureFlow.Server;

/// <summary>Builds and runs the gRPC server: featureflow.v1.Inference, grpc.health.v1.Health and reflection on one HTTP/2 endpoint.</summary>
public sealed class ServerHost : IAsyncDisposable
{
    private readonly WebApplication _app;

    private ServerHost(WebApplication app) => _app = app;

    public GenerationEngine Engine => _app.Services.GetRequiredService<GenerationEngine>();

    /// <summary>The gRPC endpoint's bound address (http://host:port), once started.</summary>
    public string Address => Addresses[0];

    /// <summary>The OpenAI-compatible HTTP endpoint's bound address, once started; null when it is off.</summary>
    public string? HttpAddress => Addresses.Count > 1 ? Addresses[1] : null;

    // Kestrel lists bound addresses in the order the endpoints were configured: gRPC first, then HTTP.
    private IReadOnlyList<string> Addresses => _app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.ToArray();

    public static ServerHost Create(ServerOptions options, Action<ILoggingBuilder>? logging = null)
    {
        if (options.Host != "localhost" && !System.Net.IPAddress.TryParse(options.Host, out _))
            throw new ArgumentException($"host '{options.Host}' is not an IP address or 'localhost'");
        if (options.Port is < 0 or > 65535) throw new ArgumentException($"port {options.Port} is outside 0..65535");
        var folder = ModelFolder.Open(options.ModelDirectory);
        var builder = WebApplication.CreateSlimBuilder();
        // One line per request from ASP.NET is noise at serving rates; our own log says what matters.
        builder.Logging.AddFilter("Microsoft.AspNetCore", LogLevel.Warning);
        logging?.Invoke(builder.Logging);
        builder.WebHost.ConfigureKestrel(k =>
        {
            // Cleartext gRPC needs an HTTP/2-only endpoint (with Http1AndHttp2 calls fail with HTTP_1_1_REQUIRED).
            Listen(k, options.Host, options.Port, HttpProtocols.Http2);
            // The OpenAI-compatible API, health and readiness on their own HTTP/1.1 endpoint.
            if (options.HttpPort is { } http) Listen(k, options.Host, http, HttpProtocols.Http1);
        });
        builder.Services.AddSingleton(_ => new GenerationEngine(folder, options.Engine));
        // Packs reload when their files change; a refused replacement is logged and the old version keeps serving.
        builder.Services.AddSingleton(sp => SteeringCatalog.Load(folder, new PackRegistryOptions
        {
            Watch = options.WatchPacks,
            Log = line => sp.GetRequiredService<ILoggerFactory>().CreateLogger("FeatureFlow.Packs").LogInformation("{Line}", line),
            Warn = line => sp.GetRequiredService<ILoggerFactory>().CreateLogger("FeatureFlow.Packs").LogWarning("{Line}", line),
        }));
        builder.Services.AddSingleton(options);
        builder.Services.AddSingleton<ExperimentService>();
        builder.Services.AddSingleton<GenerationPipeline>();
        builder.Services.AddSingleton<Observability.ServerMetrics>();
        builder.Services.AddGrpc(o =>
        {
            o.EnableDetailedErrors = false;
            o.Interceptors.Add<Observability.MetricsInterceptor>();
        });
        builder.Services.AddGrpcReflection();
        builder.Services.AddGrpcHealthChecks().AddCheck("model", () => Microsoft.Extensions.Diagnostics.HealthChecks.HealthCheckResult.Healthy());

        var app = builder.Build();
        app.MapGrpcService<InferenceService>();
        app.MapGrpcHealthChecksService();
        app.MapGrpcReflectionService();
        OpenAi.OpenAiEndpoints.Map(app);
        app.MapGet("/healthz", () => Results.Text("ok"));
        var metrics = app.Services.GetRequiredService<Observability.ServerMetrics>();
        // HTTP API calls by route and status (gRPC calls are counted by the interceptor).
        app.Use(async (http, next) =>
        {
            await next(http);
            if (http.Request.Path.StartsWithSegments("/v1"))
                metrics.Request("http", http.Request.Path.Value!, http.Response.StatusCode.ToString(System.Globalization.CultureInfo.InvariantCulture));
        });
        var registry = metrics.Registry;
        app.MapMetrics(settings => settings.Registry = registry, "/metrics");
        app.MapGet("/readyz", (GenerationEngine _) => Results.Text("ready"));
        return new ServerHost(app);
    }

    private static void Listen(KestrelServerOptions k, string host, int port, HttpProtocols protocols)
    {
        if (host is "localhost") k.ListenLocalhost(port, o => o.Protocols = protocols);
        else k.Listen(System.Net.IPAddress.Parse(host), port, o => o.Protocols = protocols);
    }

    /// <summary>Loads the model (so a bad folder fails at start-up, not on the first call) and starts listening.</summary>
    public async Task StartAsync(CancellationToken cancellationToken = default)
    {
        var engine = Engine;
        var log = _app.Services.GetRequiredService<ILoggerFactory>().CreateLogger("FeatureFlow.Server");
        log.LogInformation("model {Name} from {Dir}: {Layers} layers, d_model {D}, {Sites} hook sites; execution provider {Provider} ({Reason})",
            engine.Folder.Manifest.Name, engine.Folder.Directory, engine.Architecture.Layers, engine.Architecture.DModel,
            engine.Folder.Manifest.Steering.Sites.Count, engine.Provider.Name, engine.Provider.Reason);
        var catalog = _app.Services.GetRequiredService<SteeringCatalog>();
        log.LogInformation("steering: {Packs} packs ({Names}), SAEs at {Saes} sites", catalog.Packs.Packs.Count,
            string.Join(", ", catalog.Packs.Packs.Select(p => p.Name).Order(StringComparer.Ordinal)), catalog.Saes.BySite.Count);
        foreach (var refused in catalog.Packs.Errors) log.LogError("refused steering pack {Path}: {Reason}", refused.Path, refused.Message);
        foreach (var (path, reason) in catalog.RefusedSaes) log.LogError("refused SAE {Path}: {Reason}", path, reason);
        var experiments = _app.Services.GetRequiredService<ExperimentService>(); // a bad config fails start-up here
        log.LogInformation("experiments: {Count} ({Names})", experiments.Current.Experiments.Count,
            string.Join(", ", experiments.Current.Experiments.Keys.Order(StringComparer.Ordinal)));
        await _app.StartAsync(cancellationToken);
        log.LogInformation("serving featureflow.v1.Inference on {Address}", Address);
        if (HttpAddress is { } http) log.LogInformation("serving the OpenAI-compatible API on {Address}/v1", http);
    }

    public Task WaitForShutdownAsync(CancellationToken cancellationToken = default) => _app.WaitForShutdownAsync(cancellationToken);

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}
