using System.CommandLine;
using FeatureFlow.Api.V1;
using Google.Protobuf;

namespace FeatureFlow.Cli;

public static class InfoCommand
{
    public static Command Build(TextWriter output, TextWriter error)
    {
        var server = GenerateCommand.ServerOption();
        var key = ServerClient.KeyOption();
        var command = new Command("info", "Print a running server's model information (GetModelInfo) as JSON.") { server, key };
        command.SetAction((parse, ct) => CliApp.Guard(error, async () =>
        {
            using var client = new ServerClient(parse.GetValue(server)!, parse.GetValue(key));
            var info = await client.Inference.GetModelInfoAsync(new GetModelInfoRequest(), cancellationToken: ct);
            await output.WriteLineAsync(JsonFormatter.Default.Format(info));
            return 0;
        }));
        return command;
    }
}
