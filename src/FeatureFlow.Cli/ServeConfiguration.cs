using System.CommandLine;
using System.Text.Json;

namespace FeatureFlow.Cli;

/// <summary>
/// One name per setting everywhere: the flag <c>--http-port</c>, the environment variable <c>FEATUREFLOW_HTTP_PORT</c>
/// and the key <c>"http-port"</c> in <c>appsettings.json</c> (or <c>--config FILE</c>). A flag beats the environment,
/// which beats the file, which beats the default. Values from the environment and the file are handed to the same
/// option parsers as flags, so they are checked exactly as flags are.
/// </summary>
internal static class ServeConfiguration
{
    public const string EnvironmentPrefix = "FEATUREFLOW_";
    public const string DefaultFile = "appsettings.json";

    /// <summary>Environment variables that hold secrets: never printed.</summary>
    private static readonly string[] SecretVariables = ["FEATUREFLOW_API_KEYS", "FEATUREFLOW_ADMIN_KEYS"];

    public sealed record Setting(string Name, string? Value, string Source);

    /// <summary>The serve command's arguments with environment and file settings added as flags, and where each came from.</summary>
    public static (string[] Args, IReadOnlyList<Setting> Settings) Merge(Command serve, ParseResult parsed, string? configFile)
    {
        var file = ReadFile(configFile);
        var args = parsed.Tokens.Where(t => t.Type != System.CommandLine.Parsing.TokenType.Command).Select(t => t.Value).ToList();
        var settings = new List<Setting>();
        foreach (var option in serve.Options.Where(o => o.Name.StartsWith("--", StringComparison.Ordinal) && o.Name is not "--config" and not "--print-config"))
        {
            var key = option.Name[2..];
            var given = parsed.GetResult(option) is { Implicit: false };
            var env = Environment.GetEnvironmentVariable(EnvironmentPrefix + key.Replace('-', '_').ToUpperInvariant());
            if (given) settings.Add(new Setting(key, Text(parsed, option), "flag"));
            else if (env is not null) Add(key, env, "environment");
            else if (file.TryGetValue(key, out var value)) Add(key, value, $"file {configFile ?? DefaultFile}");
            else settings.Add(new Setting(key, Text(parsed, option), "default"));
        }
        foreach (var variable in SecretVariables)
            if (Environment.GetEnvironmentVariable(variable) is { } secret)
                settings.Add(new Setting(variable, $"({secret.Split(',', StringSplitOptions.RemoveEmptyEntries).Length} keys, redacted)", "environment"));
        return (args.ToArray(), settings);

        void Add(string key, string value, string source)
        {
            args.Add("--" + key);
            args.Add(value);
            settings.Add(new Setting(key, value, source));
        }
    }

    private static string? Text(ParseResult parsed, Option option) => parsed.GetResult(option)?.GetValueOrDefault<object?>() switch
    {
        null => null,
        string[] many => string.Join(',', many),
        var v => Convert.ToString(v, System.Globalization.CultureInfo.InvariantCulture),
    };

    private static Dictionary<string, string> ReadFile(string? path)
    {
        var file = path ?? DefaultFile;
        if (!File.Exists(file))
        {
            if (path is not null) throw new FileNotFoundException($"--config: {path} does not exist", path);
            return [];
        }
        try
        {
            using var json = JsonDocument.Parse(File.ReadAllText(file));
            if (json.RootElement.ValueKind != JsonValueKind.Object) throw new InvalidDataException($"{file}: must be a JSON object of settings");
            return json.RootElement.EnumerateObject().ToDictionary(p => p.Name, p => p.Value.ValueKind switch
            {
                JsonValueKind.String => p.Value.GetString()!,
                JsonValueKind.Number or JsonValueKind.True or JsonValueKind.False => p.Value.GetRawText(),
                _ => throw new InvalidDataException($"{file}: \"{p.Name}\" must be a string, number or boolean"),
            });
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{file}: not valid JSON ({e.Message})", e);
        }
    }

    public static string Print(IReadOnlyList<Setting> settings) =>
        JsonSerializer.Serialize(settings.ToDictionary(s => s.Name, s => new { value = s.Value, source = s.Source }),
            new JsonSerializerOptions { WriteIndented = true });
}
