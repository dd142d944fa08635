using FeatureFlow.Cli;

return await CliApp.Build(Console.Out, Console.Error).Parse(args).InvokeAsync();
