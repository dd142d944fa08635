using System.CommandLine;

namespace FeatureFlow.Cli;

public static class CliApp
{
    public static RootCommand Build(TextWriter output, TextWriter error)
    {
        var root = new RootCommand("FeatureFlow.Inference: serve and steer ONNX language models with multi-layer feature-flow steering.");
        root.Subcommands.Add(ExportCommand.Build(output, error));
        root.Subcommands.Add(HookCommand.Build(output, error));
        root.Subcommands.Add(ServeCommand.Build(output, error));
        root.Subcommands.Add(GenerateCommand.Build(output, error));
        root.Subcommands.Add(InfoCommand.Build(output, error));
        root.Subcommands.Add(CollectCommand.Build(output, error));
        root.Subcommands.Add(SaeCommand.Build(output, error));
        root.Subcommands.Add(FlowCommand.Build(output, error));
        root.Subcommands.Add(SteerCommand.Build(output, error));
        root.Subcommands.Add(CompareCommand.Build(output, error));
        root.Subcommands.Add(ExperimentsCommand.Build(output, error));
        root.Subcommands.Add(BenchCommand.Build(output, error));
        root.Subcommands.Add(EvalCommand.Build(output, error));
        return root;
    }

    /// <summary>Runs a verb body, turning expected failures into one clear line on stderr and exit code 1.</summary>
    public static async Task<int> Guard(TextWriter error, Func<Task<int>> body)
    {
        try
        {
            return await body();
        }
        catch (Exception e) when (e is FileNotFoundException or InvalidDataException or Steering.FieldValidationException
                                   or Grpc.Core.RpcException or ArgumentException or InvalidOperationException or FormatException or IOException)
        {
            var message = e is Grpc.Core.RpcException rpc ? $"{rpc.StatusCode}: {rpc.Status.Detail}" : e.Message;
            await error.WriteLineAsync($"featureflow: {message}");
            return 1;
        }
    }
}
