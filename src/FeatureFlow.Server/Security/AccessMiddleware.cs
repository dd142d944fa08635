using System.Globalization;
using Grpc.AspNetCore.Server;
using Microsoft.AspNetCore.Http.Features;

namespace FeatureFlow.Server.Security;

/// <summary>A gRPC method or HTTP route that needs an admin key (a user key gets PERMISSION_DENIED / 403).</summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class AdminOnlyAttribute : Attribute;

/// <summary>
/// The access check for both transports, before routing hands the request on and before its body is read (so an
/// unauthenticated client cannot make the server parse a message): health and metrics are open; everything else
/// needs a key when keys are configured, and admin routes an admin key. Attaches the <see cref="Caller"/> that
/// per-caller limits count against, and sets the request's body limit.
/// </summary>
public sealed class AccessMiddleware(RequestDelegate next, ApiKeyStore keys, ILogger<AccessMiddleware> log)
{
    /// <summary>Probes and scrapes that must work without a key (liveness, readiness, Prometheus).</summary>
    private static readonly HashSet<string> OpenPaths = ["/healthz", "/readyz", "/metrics"];
    private const string HealthService = "grpc.health.v1.Health";

    public async Task InvokeAsync(HttpContext http)
    {
        var endpoint = http.GetEndpoint();
        var grpcMethod = endpoint?.Metadata.GetMetadata<GrpcMethodMetadata>()?.Method;
        // Kestrel's body limit is the HTTP one. gRPC bounds its requests by message size instead, refusing a message
        // from its length prefix; Kestrel's limit would race that check and reset the stream, so it is lifted for gRPC.
        if (grpcMethod is not null && http.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } body)
            body.MaxRequestBodySize = null;
        var path = http.Request.Path.Value ?? "";
        if (grpcMethod is null ? OpenPaths.Contains(path) || IsPage(path) : grpcMethod.ServiceName == HealthService)
        {
            await next(http);
            return;
        }
        var address = http.Connection.RemoteIpAddress?.ToString() ?? "unknown";
        var (caller, refusal) = keys.Authenticate(http.Request.Headers.Authorization, address);
        if (caller is null)
        {
            // Debug: a client probing with bad keys must not be able to flood the log.
            log.LogDebug("refused {Path} from {Address}: {Reason}", path, address, refusal);
            await Refuse(http, 401, Grpc.Core.StatusCode.Unauthenticated, refusal!, "invalid_api_key");
            return;
        }
        if (endpoint?.Metadata.GetMetadata<AdminOnlyAttribute>() is not null && !caller.IsAdmin)
        {
            log.LogWarning("refused {Path} for {Caller}: not an admin key", path, caller.Id);
            await Refuse(http, 403, Grpc.Core.StatusCode.PermissionDenied,
                $"{grpcMethod?.Name ?? path} needs an admin key", "insufficient_permissions");
            return;
        }
        http.Features.Set(caller);
        await next(http);
    }

    /// <summary>The browser pages and their assets are public; the API calls they make carry the key.</summary>
    private static bool IsPage(string path) => path is "/" or "/experiments" || path.StartsWith("/ui/", StringComparison.Ordinal);

    private static Task Refuse(HttpContext http, int status, Grpc.Core.StatusCode grpcStatus, string message, string code)
    {
        if (http.Request.ContentType?.StartsWith("application/grpc", StringComparison.Ordinal) == true)
        {
            // A trailers-only gRPC response: HTTP 200 with the status in the headers and no body. The messages are
            // our own ASCII text, so grpc-message needs no percent-encoding.
            http.Response.ContentType = "application/grpc";
            http.Response.Headers["grpc-status"] = ((int)grpcStatus).ToString(CultureInfo.InvariantCulture);
            http.Response.Headers["grpc-message"] = message;
            return Task.CompletedTask;
        }
        if (status == 401) http.Response.Headers.WWWAuthenticate = "Bearer";
        return OpenAi.OpenAiEndpoints.Error(http, status, message, null, code);
    }
}
