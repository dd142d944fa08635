using System.Net;
using System.Security.Cryptography.X509Certificates;

namespace FeatureFlow.Server.Security;

/// <summary>The start-up side of access control: keys, the loopback rule, limits, TLS, and what the log says.</summary>
public static class ServerSecurity
{
    /// <summary>
    /// Loads the keys (file and environment) and the TLS certificate and checks the limits. Refuses to serve a
    /// non-loopback host without keys unless <see cref="ServerOptions.InsecureNoAuth"/> says so: an open server
    /// on a network lets anyone generate and replace packs.
    /// </summary>
    public static (ApiKeyStore Keys, X509Certificate2? Certificate) Prepare(ServerOptions options, int contextLength)
    {
        options.Limits.Validate(contextLength);
        var keys = ApiKeyStore.Load(options.ApiKeysFile, Environment.GetEnvironmentVariable);
        if (!keys.Enabled && !IsLoopback(options.Host) && !options.InsecureNoAuth)
            throw new ArgumentException($"host {options.Host} is not a loopback address and no API keys are configured: "
                + $"give --api-keys-file or {ApiKeyStore.UserKeysVariable}, or --insecure-no-auth to serve it without "
                + "authentication");
        return (keys, TlsCertificate.Load(options));
    }

    private static bool IsLoopback(string host) =>
        host == "localhost" || (IPAddress.TryParse(host, out var ip) && IPAddress.IsLoopback(ip));

    public static void AddServices(IServiceCollection services, ApiKeyStore keys)
    {
        services.AddSingleton(keys);
        services.AddSingleton(sp => new RequestLimits(sp.GetRequiredService<ServerOptions>().Limits,
            sp.GetRequiredService<Engine.GenerationEngine>()));
        services.AddSingleton(sp => new CallerLimiter(sp.GetRequiredService<ServerOptions>().Limits));
    }

    /// <summary>Says whether authentication is on: key counts, never keys.</summary>
    public static void LogStatus(ILogger log, ApiKeyStore keys, ServerOptions options)
    {
        if (keys.Enabled)
            log.LogInformation("authentication: on, {Keys} API keys ({Admin} admin)", keys.Count, keys.AdminCount);
        else if (IsLoopback(options.Host))
            log.LogInformation("authentication: off (no API keys); listening on loopback only");
        else
            log.LogWarning("authentication: OFF on {Host} (--insecure-no-auth): anyone who can reach it may generate and "
                + "change packs", options.Host);
        var l = options.Limits;
        log.LogInformation("limits per caller ({By}): {Streams} streams, {Tokens} tokens/minute; TLS {Tls}",
            keys.Enabled ? "API key" : "client address", l.MaxStreamsPerKey,
            l.TokensPerMinutePerKey?.ToString(System.Globalization.CultureInfo.InvariantCulture) ?? "unlimited",
            options.TlsCertificateFile is null ? "off" : "on");
    }
}
