using System.Diagnostics;
using System.Text.Json;

namespace FeatureFlow.Cli.Tests;

/// <summary>serve's settings: flag over environment over file over default, one name everywhere, secrets never printed.</summary>
public class ServeConfigurationTests
{
    private static async Task<(int Exit, string Out, string Err)> Serve(string workingDirectory, Dictionary<string, string> environment, params string[] args)
    {
        var start = new ProcessStartInfo("dotnet", [Path.Combine(AppContext.BaseDirectory, "featureflow.dll"), "serve", .. args])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = workingDirectory,
        };
        foreach (var (k, v) in environment) start.Environment[k] = v;
        using var process = Process.Start(start)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(60));
        return (process.ExitCode, await output, await error);
    }

    [Fact]
    public async Task Print_config_shows_each_setting_and_its_source_with_secrets_redacted()
    {
        var dir = Directory.CreateTempSubdirectory("featureflow-config-").FullName;
        await File.WriteAllTextAsync(Path.Combine(dir, "appsettings.json"), """{"max-batch-rows": 32, "drain-seconds": 10, "http-port": 7000}""");
        const string secret = "a-very-secret-key-0123456789";
        var (exit, stdout, stderr) = await Serve(dir, new() { ["FEATUREFLOW_DRAIN_SECONDS"] = "12", ["FEATUREFLOW_API_KEYS"] = secret },
            "--print-config", "--http-port", "9090");
        Assert.True(exit == 0, stderr);
        var settings = JsonDocument.Parse(stdout).RootElement;
        (string Value, string Source) Get(string name) =>
            (settings.GetProperty(name).GetProperty("value").GetString()!, settings.GetProperty(name).GetProperty("source").GetString()!);
        Assert.Equal(("9090", "flag"), Get("http-port"));                       // flag beats file
        Assert.Equal(("12", "environment"), Get("drain-seconds"));              // environment beats file
        Assert.Equal(("32", "file appsettings.json"), Get("max-batch-rows"));   // file beats default
        Assert.Equal(("50051", "default"), Get("port"));
        Assert.Equal("(1 keys, redacted)", Get("FEATUREFLOW_API_KEYS").Value);
        Assert.DoesNotContain(secret, stdout + stderr);
        Directory.Delete(dir, recursive: true);
    }

    [Fact]
    public async Task A_bad_value_from_the_environment_is_refused_and_says_where_it_came_from()
    {
        var (exit, _, stderr) = await Serve(Path.GetTempPath(), new() { ["FEATUREFLOW_HTTP_PORT"] = "eighty" }, "--print-config");
        Assert.Equal(1, exit);
        Assert.Contains("eighty", stderr);
        Assert.Contains("http-port = eighty (environment)", stderr);
    }
}
