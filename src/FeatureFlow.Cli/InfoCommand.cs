using System.CommandLine;
using FeatureFlow.Api.V1;
using Google.Protobuf;
using Grpc.Net.Client;

namespace FeatureFlow.Cli;

public static class InfoCommand
{
    public static Command Build(TextWriter output, TextWriter error)
    {
        var server = GenerateCommand.ServerOption();
        var command = new Command("info", "Print a running server's model information (GetModelInfo) as JSON.") { server };
        command.SetAction((parse, ct) => CliApp.Guard(error, async () =>
        {
            using var channel = GrpcChannel.ForAddress(parse.GetValue(server)!);
            var info = await new Inference.InferenceClient(channel).GetModelInfoAsync(new GetModelInfoRequest(), cancellationToken: ct);
            await output.WriteLineAsync(JsonFormatter.Default.Format(info));
            return 0;
        }));
        return command;
    }
}
