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

    /// <summary>The gRPC endpoint's bound address (http://host:port, https:// with TLS), once started.</summary>
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
        var (keys, certificate) = Security.ServerSecurity.Prepare(options, folder.Manifest.Architecture.ContextLength);
        var builder = WebApplication.CreateSlimBuilder();
        // One line per request from ASP.NET is noise at serving rates; our own log says what matters.
        builder.Logging.AddFilter("Microsoft.AspNetCore", LogLevel.Warning);
        if (options.LogFormat == "json")
        {
            builder.Logging.ClearProviders();
            builder.Logging.AddJsonConsole(o =>
            {
                o.IncludeScopes = true;
                o.UseUtcTimestamp = true;
                o.TimestampFormat = "yyyy-MM-ddTHH:mm:ss.fffZ";
            });
        }
        else if (options.LogFormat != "text") throw new ArgumentException($"log format '{options.LogFormat}' is not text or json");
        logging?.Invoke(builder.Logging);
        builder.WebHost.ConfigureKestrel(k =>
        {
            options.Limits.ApplyTo(k.Limits);
            // Cleartext gRPC needs an HTTP/2-only endpoint (with Http1AndHttp2 calls fail with HTTP_1_1_REQUIRED).
            Listen(k, options.Host, options.Port, HttpProtocols.Http2, certificate);
            // The OpenAI-compatible API, health and readiness on their own endpoint: HTTP/1.1, and HTTP/2 too under
            // TLS, where ALPN lets each client pick.
            if (options.HttpPort is { } http)
                Listen(k, options.Host, http, certificate is null ? HttpProtocols.Http1 : HttpProtocols.Http1AndHttp2, certificate);
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
        // Stateless: one instance serves gRPC and the JSON-over-HTTP API.
        builder.Services.AddSingleton<InferenceService>();
        Security.ServerSecurity.AddServices(builder.Services, keys);
        builder.Services.AddSingleton<Observability.ServerMetrics>();
        builder.Services.AddGrpc(o =>
        {
            o.EnableDetailedErrors = false;
            o.MaxReceiveMessageSize = options.Limits.MaxGrpcMessageBytes;
            o.Interceptors.Add<Observability.MetricsInterceptor>();
        });
        builder.Services.AddGrpcReflection();
        builder.Services.AddSingleton<ServerLifecycle>();
        // Readiness is real: not serving until the model is loaded and listening, and from the first moment of a drain.
        builder.Services.AddGrpcHealthChecks().AddCheck<ServerLifecycle>("model");
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(options.DrainSeconds + 5));

        var app = builder.Build();
        app.MapGrpcService<InferenceService>();
        app.MapGrpcHealthChecksService();
        app.MapGrpcReflectionService();
        OpenAi.OpenAiEndpoints.Map(app);
        Http.UiApi.Map(app);
        Http.Playground.Map(app);
        app.MapGet("/healthz", () => Results.Text("ok"));
        var metrics = app.Services.GetRequiredService<Observability.ServerMetrics>();
        // HTTP API calls by route and status (gRPC calls are counted by the interceptor).
        app.Use(async (http, next) =>
        {
            await next(http);
            if (http.Request.Path.StartsWithSegments("/v1"))
                metrics.Request("http", http.Request.Path.Value!, http.Response.StatusCode.ToString(System.Globalization.CultureInfo.InvariantCulture));
        });
        // After the metrics middleware, so that refused HTTP calls are counted too.
        app.UseMiddleware<Security.AccessMiddleware>();
        var registry = metrics.Registry;
        app.MapMetrics(settings => settings.Registry = registry, "/metrics");
        app.MapGet("/readyz", (ServerLifecycle lifecycle) => lifecycle.Ready
            ? Results.Text("ready")
            : Results.Text(lifecycle.Draining ? "draining" : "starting", statusCode: 503));
        return new ServerHost(app);
    }

    private static void Listen(KestrelServerOptions k, string host, int port, HttpProtocols protocols,
        System.Security.Cryptography.X509Certificates.X509Certificate2? certificate)
    {
        void Configure(ListenOptions o)
        {
            o.Protocols = protocols;
            if (certificate is not null) o.UseHttps(certificate);
        }
        if (host is "localhost") k.ListenLocalhost(port, Configure);
        else k.Listen(System.Net.IPAddress.Parse(host), port, Configure);
    }

    /// <summary>Loads the model (so a bad folder fails at start-up, not on the first call) and starts listening.</summary>
    public async Task StartAsync(CancellationToken cancellationToken = default)
    {
        var engine = Engine;
        var log = _app.Services.GetRequiredService<ILoggerFactory>().CreateLogger("FeatureFlow.Server");
        log.LogInformation("model {Name} from {Dir}: {Layers} layers, d_model {D}, {Sites} hook sites; execution provider {Provider} ({Reason})",
            engine.Folder.Manifest.Name, engine.Folder.Directory, engine.Architecture.Layers, engine.Architecture.DModel,
            engine.Folder.Manifest.Steering.Sites.Count, engine.Provider.Name, engine.Provider.Reason);
        log.LogInformation("weights: {Weights}", engine.WeightSharing);
        var catalog = _app.Services.GetRequiredService<SteeringCatalog>();
        log.LogInformation("steering: {Packs} packs ({Names}), SAEs at {Saes} sites", catalog.Packs.Packs.Count,
            string.Join(", ", catalog.Packs.Packs.Select(p => p.Name).Order(StringComparer.Ordinal)), catalog.Saes.BySite.Count);
        foreach (var refused in catalog.Packs.Errors) log.LogError("refused steering pack {Path}: {Reason}", refused.Path, refused.Message);
        foreach (var (path, reason) in catalog.RefusedSaes) log.LogError("refused SAE {Path}: {Reason}", path, reason);
        var experiments = _app.Services.GetRequiredService<ExperimentService>(); // a bad config fails start-up here
        log.LogInformation("experiments: {Count} ({Names})", experiments.Current.Experiments.Count,
            string.Join(", ", experiments.Current.Experiments.Keys.Order(StringComparer.Ordinal)));
        Security.ServerSecurity.LogStatus(log, _app.Services.GetRequiredService<Security.ApiKeyStore>(), _app.Services.GetRequiredService<ServerOptions>());
        await _app.StartAsync(cancellationToken);
        var lifecycle = _app.Services.GetRequiredService<ServerLifecycle>();
        _app.Lifetime.ApplicationStopping.Register(lifecycle.Stopping);
        lifecycle.Started();
        log.LogInformation("serving featureflow.v1.Inference on {Address}", Address);
        if (HttpAddress is { } http) log.LogInformation("serving the OpenAI-compatible API on {Address}/v1", http);
    }

    /// <summary>Stops as SIGTERM does: not ready at once, in-flight streams drain (up to the drain time), then it stops.</summary>
    public Task StopAsync() => _app.StopAsync();

    public Task WaitForShutdownAsync(CancellationToken cancellationToken = default) => _app.WaitForShutdownAsync(cancellationToken);

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}
