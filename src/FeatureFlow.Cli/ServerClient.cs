using System.CommandLine;
using FeatureFlow.Api.V1;
using Grpc.Core.Interceptors;
using Grpc.Net.Client;

namespace FeatureFlow.Cli;

/// <summary>A connection to a running server for the client verbs, sending the API key when there is one.</summary>
internal sealed class ServerClient : IDisposable
{
    public const string KeyVariable = "FEATUREFLOW_API_KEY";
    private readonly GrpcChannel _channel;

    public ServerClient(string address, string? key)
    {
        _channel = GrpcChannel.ForAddress(address);
        key ??= Environment.GetEnvironmentVariable(KeyVariable);
        var invoker = string.IsNullOrEmpty(key)
            ? _channel.CreateCallInvoker()
            : _channel.Intercept(metadata =>
            {
                metadata.Add("authorization", "Bearer " + key);
                return metadata;
            });
        Inference = new Inference.InferenceClient(invoker);
    }

    public Inference.InferenceClient Inference { get; }

    public static Option<string?> KeyOption() =>
        new("--api-key") { Description = $"API key for a server that requires one (default: ${KeyVariable})" };

    public void Dispose() => _channel.Dispose();
}
