using System.CommandLine;
using FeatureFlow.Engine;
using FeatureFlow.Server;

namespace FeatureFlow.Cli;

public static class ServeCommand
{
    public static Option<string> ModelOption() =>
        new("--model") { Description = "model folder", DefaultValueFactory = _ => ServerOptions.DefaultModelDirectory };

    public static Option<ExecutionProviderPreference> ProviderOption() =>
        new("--provider") { Description = "execution provider: Auto (CUDA if it loads, else CPU), Cpu or Cuda", DefaultValueFactory = _ => ExecutionProviderPreference.Auto };

    public static Option<int> IntraOpThreadsOption() =>
        new("--intra-op-threads") { Description = "ONNX Runtime threads inside one step (0: ONNX Runtime's choice; 1 is often fastest for tiny models)", DefaultValueFactory = _ => 0 };

    public static Command Build(TextWriter error)
    {
        var model = ModelOption();
        var host = new Option<string>("--host") { Description = "address to listen on", DefaultValueFactory = _ => "127.0.0.1" };
        var port = new Option<int>("--port") { Description = "port (0 picks a free one)", DefaultValueFactory = _ => 50051 };
        var provider = ProviderOption();
        var threads = IntraOpThreadsOption();
        var command = new Command("serve", "Serve a model folder over gRPC (featureflow.v1.Inference, grpc.health.v1.Health, reflection; cleartext HTTP/2).")
        {
            model, host, port, provider, threads,
        };
        command.SetAction((parse, ct) => CliApp.Guard(error, async () =>
        {
            var options = new ServerOptions
            {
                ModelDirectory = parse.GetValue(model)!,
                Host = parse.GetValue(host)!,
                Port = parse.GetValue(port),
                Engine = new EngineOptions { ExecutionProvider = parse.GetValue(provider), IntraOpThreads = parse.GetValue(threads) },
            };
            await using var server = ServerHost.Create(options);
            await server.StartAsync(ct);
            await server.WaitForShutdownAsync(ct);
            return 0;
        }));
        return command;
    }
}
