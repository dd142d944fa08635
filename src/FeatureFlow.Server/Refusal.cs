using FeatureFlow.Engine;
using FeatureFlow.Steering;
using FeatureFlow.Steering.Packs;
using Grpc.Core;

namespace FeatureFlow.Server;

/// <summary>
/// How a refused or failed request is answered on either transport: gRPC status, HTTP status, message, the parameter
/// it names, the OpenAI error code, and when to retry. One table, so gRPC, the OpenAI endpoint and the page API agree.
/// </summary>
public sealed record Refusal(StatusCode Grpc, int Http, string Message, string? Param, string Code, TimeSpan? RetryAfter = null)
{
    /// <summary>The answer for <paramref name="e"/>; null for an unexpected failure, which is a server error.</summary>
    public static Refusal? Of(Exception e) => e switch
    {
        PackNotFoundException or ExperimentNotFoundException =>
            new(StatusCode.NotFound, 404, e.Message, ((FieldValidationException)e).Field, "not_found"),
        FieldValidationException f => new(StatusCode.InvalidArgument, 400, e.Message, f.Field, "invalid_value"),
        InvalidDataException => new(StatusCode.InvalidArgument, 400, e.Message, null, "invalid_value"),
        EngineOverloadedException o =>
            new(StatusCode.ResourceExhausted, 429, $"{o.Limit}: {o.Message}", null, "rate_limit_exceeded", o.RetryAfter),
        ObjectDisposedException => new(StatusCode.Unavailable, 503, "the server is shutting down", null, "unavailable"),
        EngineShutdownException => new(StatusCode.Unavailable, 503, e.Message, null, "server_shutting_down"),
        GenerationFailedException g => new(StatusCode.Internal, 500, e.Message, null, g.Code),
        _ => null,
    };

    /// <summary>The gRPC form; a retry hint goes out as gRPC's retry pushback trailer.</summary>
    public RpcException ToRpc(ServerCallContext context)
    {
        if (RetryAfter is { } retry)
            context.ResponseTrailers.Add("grpc-retry-pushback-ms",
                ((long)retry.TotalMilliseconds).ToString(System.Globalization.CultureInfo.InvariantCulture));
        return new RpcException(new Status(Grpc, Message));
    }
}
