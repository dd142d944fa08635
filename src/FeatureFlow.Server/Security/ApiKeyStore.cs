using System.Security.Cryptography;
using System.Text;

namespace FeatureFlow.Server.Security;

/// <summary>
/// Who sent a request. <see cref="Id"/> is what per-caller limits are counted against and what logs name: the first
/// 8 hex digits of the key's SHA-256 (<c>key:1a2b3c4d</c>), or the client address when the server has no keys
/// (<c>addr:127.0.0.1</c>). It never contains the key.
/// </summary>
public sealed record Caller(string Id, bool IsAdmin)
{
    /// <summary>The caller that <see cref="AccessMiddleware"/> attached to the request.</summary>
    public static Caller Of(HttpContext http) =>
        http.Features.Get<Caller>() ?? throw new InvalidOperationException("the request passed no access check");
}

/// <summary>
/// The API keys the server accepts, held only as SHA-256 hashes. Sources, all read at start-up:
/// a key file (<see cref="ServerOptions.ApiKeysFile"/>: one key a line, <c>admin:KEY</c> for an admin key, blank
/// lines and <c>#</c> comments skipped) and the comma-separated environment variables
/// <see cref="UserKeysVariable"/> and <see cref="AdminKeysVariable"/>. Admin keys also work as user keys.
/// </summary>
public sealed class ApiKeyStore
{
    public const string UserKeysVariable = "FEATUREFLOW_API_KEYS";
    public const string AdminKeysVariable = "FEATUREFLOW_ADMIN_KEYS";
    public const string AdminPrefix = "admin:";
    /// <summary>
    /// Shorter keys are refused: a key's id is a hash prefix that logs show, so a key must be too long to guess from
    /// it. 16 characters of a random token are ≥ 96 bits.
    /// </summary>
    public const int MinKeyLength = 16;

    private readonly byte[][] _hashes;
    private readonly bool[] _admin;

    private ApiKeyStore(Dictionary<string, bool> keys)
    {
        _hashes = keys.Keys.Select(Hash).ToArray();
        _admin = keys.Values.ToArray();
    }

    /// <summary>False without keys: every request is then served, and per-caller limits count by address.</summary>
    public bool Enabled => _hashes.Length > 0;
    public int Count => _hashes.Length;
    public int AdminCount => _admin.Count(a => a);

    /// <summary>Reads the key file (if any) and the two variables through <paramref name="environment"/>.</summary>
    public static ApiKeyStore Load(string? file, Func<string, string?> environment)
    {
        // key → admin; a key listed as both user and admin is an admin key.
        var keys = new Dictionary<string, bool>(StringComparer.Ordinal);
        void Add(string key, bool admin, string where)
        {
            if (key.Length < MinKeyLength)
                throw new InvalidDataException($"{where}: an API key must have at least {MinKeyLength} characters");
            // Token68 characters (RFC 7235), the ones a Bearer token may carry; ':' and ',' stay free as separators.
            if (!key.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '.' or '_' or '~' or '+' or '/' or '='))
                throw new InvalidDataException($"{where}: an API key may contain only A-Z a-z 0-9 - . _ ~ + / =");
            keys[key] = admin || keys.GetValueOrDefault(key);
        }
        if (file is not null)
        {
            var lines = File.ReadAllLines(file);
            for (var i = 0; i < lines.Length; i++)
            {
                var line = lines[i].Trim();
                if (line.Length == 0 || line.StartsWith('#')) continue;
                var admin = line.StartsWith(AdminPrefix, StringComparison.Ordinal);
                Add(admin ? line[AdminPrefix.Length..].Trim() : line, admin, $"{file}:{i + 1}");
            }
        }
        foreach (var (variable, admin) in new[] { (UserKeysVariable, false), (AdminKeysVariable, true) })
        {
            var items = (environment(variable) ?? "")
                .Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
            for (var i = 0; i < items.Length; i++) Add(items[i], admin, $"{variable} item {i + 1}");
        }
        return new ApiKeyStore(keys);
    }

    /// <summary>
    /// The caller named by an <c>authorization: Bearer KEY</c> header value, or null and why not. Without keys there is
    /// no access control (the server is on loopback, or was told --insecure-no-auth): every request is served with
    /// admin scope, as the caller at <paramref name="address"/>.
    /// </summary>
    public (Caller? Caller, string? Refusal) Authenticate(string? authorization, string address)
    {
        if (!Enabled) return (new Caller($"addr:{address}", true), null);
        if (string.IsNullOrEmpty(authorization))
            return (null, "missing API key: send the header 'authorization: Bearer KEY'");
        const string scheme = "Bearer ";
        if (!authorization.StartsWith(scheme, StringComparison.OrdinalIgnoreCase))
            return (null, "the authorization header must be 'Bearer KEY'");
        var hash = Hash(authorization[scheme.Length..].Trim());
        var index = FindHash(hash, _hashes);
        return index < 0 ? (null, "invalid API key") : (new Caller($"key:{Id(hash)}", _admin[index]), null);
    }

    /// <summary>
    /// The index of <paramref name="hash"/> in <paramref name="hashes"/>, or −1. Compares against every entry in
    /// constant time and never stops early, so the time taken says nothing about which key (if any) matched.
    /// </summary>
    public static int FindHash(ReadOnlySpan<byte> hash, IReadOnlyList<byte[]> hashes)
    {
        var found = -1;
        for (var i = 0; i < hashes.Count; i++)
            if (CryptographicOperations.FixedTimeEquals(hash, hashes[i])) found = i;
        return found;
    }

    public static byte[] Hash(string key) => SHA256.HashData(Encoding.UTF8.GetBytes(key));

    /// <summary>A key's short, non-reversible name for logs: the first 8 hex digits of its SHA-256.</summary>
    public static string Id(string key) => Id(Hash(key));

    private static string Id(byte[] hash) => Convert.ToHexStringLower(hash, 0, 4);
}
