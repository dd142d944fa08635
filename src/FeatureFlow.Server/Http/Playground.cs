using System.Collections.Frozen;
using System.Security.Cryptography;
using Microsoft.Net.Http.Headers;

namespace FeatureFlow.Server.Http;

/// <summary>
/// The browser pages: the steering playground at <c>/</c>, the experiment dashboard at <c>/experiments</c> and their
/// scripts and styles at <c>/ui/*</c>. Hand-written HTML, CSS and JavaScript modules under <c>Http/wwwroot/</c>,
/// embedded in this assembly, so the server needs no files beside it and the pages work offline. Only embedded files
/// are served (a path never reaches the file system). Every response is revalidated (<c>no-cache</c> + a content
/// ETag, answered 304 when unchanged), so an upgraded server never runs with a stale script, and a content security
/// policy allows nothing from outside the server.
/// </summary>
public static class Playground
{
    private const string ResourcePrefix = "wwwroot/";

    /// <summary>Everything the pages load comes from this server; nothing runs inline; no framing.</summary>
    private const string ContentSecurityPolicy =
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

    private sealed record Asset(byte[] Content, string ContentType, string ETag);

    private static readonly Lazy<FrozenDictionary<string, Asset>> Assets = new(Load);

    public static void Map(WebApplication app)
    {
        app.MapMethods("/", ["GET", "HEAD"], (HttpContext http) => Serve(http, "index.html"));
        app.MapMethods("/experiments", ["GET", "HEAD"], (HttpContext http) => Serve(http, "experiments.html"));
        app.MapMethods("/ui/{**path}", ["GET", "HEAD"], (HttpContext http, string path) => Serve(http, "ui/" + path));
    }

    /// <summary>The embedded files by path under wwwroot/ (for tests).</summary>
    public static IReadOnlyCollection<string> Files => Assets.Value.Keys;

    private static Task Serve(HttpContext http, string path)
    {
        var response = http.Response;
        if (!Assets.Value.TryGetValue(path, out var asset))
            return OpenAi.OpenAiEndpoints.Error(http, 404, $"no page or asset at {http.Request.Path}", null, "not_found");
        var headers = response.GetTypedHeaders();
        headers.CacheControl = new CacheControlHeaderValue { NoCache = true };
        response.Headers.ETag = asset.ETag;
        response.Headers.XContentTypeOptions = "nosniff";
        response.Headers.ContentSecurityPolicy = ContentSecurityPolicy;
        response.Headers["Referrer-Policy"] = "no-referrer";
        if (http.Request.GetTypedHeaders().IfNoneMatch is { Count: > 0 } match
            && match.Any(m => m.Equals(EntityTagHeaderValue.Any) || m.Compare(new EntityTagHeaderValue(asset.ETag), useStrongComparison: false)))
        {
            response.StatusCode = StatusCodes.Status304NotModified;
            return Task.CompletedTask;
        }
        response.ContentType = asset.ContentType;
        response.ContentLength = asset.Content.Length;
        return HttpMethods.IsHead(http.Request.Method) ? Task.CompletedTask : response.Body.WriteAsync(asset.Content).AsTask();
    }

    private static FrozenDictionary<string, Asset> Load()
    {
        var assembly = typeof(Playground).Assembly;
        var assets = new Dictionary<string, Asset>(StringComparer.Ordinal);
        foreach (var name in assembly.GetManifestResourceNames())
        {
            if (!name.StartsWith(ResourcePrefix, StringComparison.Ordinal)) continue;
            var path = name[ResourcePrefix.Length..].Replace('\\', '/');
            using var stream = assembly.GetManifestResourceStream(name)!;
            using var copy = new MemoryStream();
            stream.CopyTo(copy);
            var content = copy.ToArray();
            var etag = $"\"{Convert.ToHexStringLower(SHA256.HashData(content))[..20]}\"";
            assets[path] = new Asset(content, ContentType(path), etag);
        }
        return assets.ToFrozenDictionary(StringComparer.Ordinal);
    }

    private static string ContentType(string path) => Path.GetExtension(path) switch
    {
        ".html" => "text/html; charset=utf-8",
        ".css" => "text/css; charset=utf-8",
        ".js" or ".mjs" => "text/javascript; charset=utf-8",
        ".svg" => "image/svg+xml",
        ".png" => "image/png",
        ".json" => "application/json",
        var other => throw new InvalidOperationException($"embedded asset {path}: no content type for '{other}'"),
    };
}
