namespace FeatureFlow.Cli.Tests;

/// <summary>Runs the featureflow command in-process and captures what it prints.</summary>
internal static class CliRunner
{
    public static async Task<(int Exit, string Out, string Err)> Run(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        var exit = await CliApp.Build(output, error).Parse(args).InvokeAsync();
        return (exit, output.ToString(), error.ToString());
    }
}
