using FeatureFlow.Api.V1;
using FeatureFlow.Engine;
using Grpc.Net.Client;

namespace FeatureFlow.Server.Tests;

/// <summary>A real server on a free loopback port serving the shipped model, and a client channel to it.</summary>
public sealed class ServerFixture : IAsyncLifetime
{
    private ServerHost? _host;

    public ServerHost Host => _host!;
    public GrpcChannel Channel { get; private set; } = null!;
    public Inference.InferenceClient Client => new(Channel);

    public async Task InitializeAsync()
    {
        _host = ServerHost.Create(new ServerOptions
        {
            ModelDirectory = RepoPaths.Stories260kModel,
            Port = 0,
            Engine = new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu },
        });
        await _host.StartAsync();
        Channel = GrpcChannel.ForAddress(_host.Address);
    }

    public async Task DisposeAsync()
    {
        Channel.Dispose();
        if (_host is not null) await _host.DisposeAsync();
    }
}
