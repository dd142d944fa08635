using Grpc.Core;
using Grpc.Core.Interceptors;

namespace FeatureFlow.Server.Observability;

/// <summary>Counts every gRPC call by method and final status, whatever the handler did.</summary>
public sealed class MetricsInterceptor(ServerMetrics metrics) : Interceptor
{
    public override async Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context,
        UnaryServerMethod<TRequest, TResponse> continuation)
    {
        var status = StatusCode.Unknown;
        try
        {
            var response = await continuation(request, context);
            status = StatusCode.OK;
            return response;
        }
        catch (Exception e)
        {
            status = StatusOf(e, context);
            throw;
        }
        finally
        {
            metrics.Request("grpc", Method(context), status.ToString());
        }
    }

    public override async Task ServerStreamingServerHandler<TRequest, TResponse>(TRequest request, IServerStreamWriter<TResponse> responseStream,
        ServerCallContext context, ServerStreamingServerMethod<TRequest, TResponse> continuation)
    {
        var status = StatusCode.Unknown;
        try
        {
            await continuation(request, responseStream, context);
            status = StatusCode.OK;
        }
        catch (Exception e)
        {
            status = StatusOf(e, context);
            throw;
        }
        finally
        {
            metrics.Request("grpc", Method(context), status.ToString());
        }
    }

    private static StatusCode StatusOf(Exception e, ServerCallContext context) => e switch
    {
        RpcException rpc => rpc.StatusCode,
        OperationCanceledException when context.CancellationToken.IsCancellationRequested => StatusCode.Cancelled,
        _ => StatusCode.Unknown,
    };

    private static string Method(ServerCallContext context) => context.Method[(context.Method.LastIndexOf('/') + 1)..];
}
