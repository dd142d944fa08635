using System.CommandLine;
using FeatureFlow.Server;
using FeatureFlow.Server.Security;

namespace FeatureFlow.Cli;

/// <summary><c>serve</c>'s access-control, TLS and limit flags (README: "Security and limits").</summary>
internal sealed class ServeSecurityFlags
{
    private static readonly ServerLimits Defaults = new();

    private readonly Option<string?> _keys = new("--api-keys-file")
    {
        Description = $"API keys, one a line; 'admin:KEY' marks an admin key ({ApiKeyStore.UserKeysVariable} and "
            + $"{ApiKeyStore.AdminKeysVariable}, comma-separated, add more). Without keys only loopback is served",
    };
    private readonly Option<bool> _insecure = new("--insecure-no-auth")
    {
        Description = "serve a non-loopback --host without API keys",
    };
    private readonly Option<string?> _cert = new("--tls-cert")
    {
        Description = "PEM certificate: both endpoints serve TLS (with --tls-key)",
    };
    private readonly Option<string?> _key = new("--tls-key") { Description = "PEM private key of --tls-cert" };
    private readonly Option<int?> _prompt = new("--max-prompt-tokens")
    {
        Description = "prompt tokens per request (default: context − 1)",
    };
    private readonly Option<int?> _maxTokens = new("--max-tokens-limit")
    {
        Description = "largest max_tokens a request may ask for (default: only the context bounds it)",
    };
    private readonly Option<int> _terms = new("--max-terms")
    {
        Description = "steering terms per request or Compare arm", DefaultValueFactory = _ => Defaults.MaxTerms,
    };
    private readonly Option<int> _features = new("--max-readout-features")
    {
        Description = "features one request lists for read-out (readout.features; watch on Compare)",
        DefaultValueFactory = _ => Defaults.MaxReadoutFeatures,
    };
    private readonly Option<long> _body = new("--max-request-body-bytes")
    {
        Description = "HTTP request body size; larger is 413", DefaultValueFactory = _ => Defaults.MaxRequestBodyBytes,
    };
    private readonly Option<int> _message = new("--max-grpc-message-bytes")
    {
        Description = "gRPC request message size; larger is RESOURCE_EXHAUSTED",
        DefaultValueFactory = _ => Defaults.MaxGrpcMessageBytes,
    };
    private readonly Option<double> _headers = new("--request-headers-timeout")
    {
        Description = "seconds a client has to send its request headers",
        DefaultValueFactory = _ => Defaults.RequestHeadersTimeout.TotalSeconds,
    };
    private readonly Option<double> _rate = new("--min-request-body-bytes-per-second")
    {
        Description = "slowest a request body may arrive after 5 s (0: no check)",
        DefaultValueFactory = _ => Defaults.MinRequestBodyBytesPerSecond,
    };
    private readonly Option<int> _streams = new("--max-streams-per-key")
    {
        Description = "running streams per API key (per client address without keys)",
        DefaultValueFactory = _ => Defaults.MaxStreamsPerKey,
    };
    private readonly Option<int?> _tokens = new("--tokens-per-minute-per-key")
    {
        Description = "token bucket per API key (per client address without keys): max_tokens × rows reserved at "
            + "admission, unused tokens refunded when the stream ends (default: off)",
    };

    public ServeSecurityFlags(Command command)
    {
        Option[] all = [_keys, _insecure, _cert, _key, _prompt, _maxTokens, _terms, _features, _body, _message, _headers,
            _rate, _streams, _tokens];
        foreach (var option in all) command.Options.Add(option);
    }

    public ServerOptions Apply(ParseResult parse, ServerOptions options) => options with
    {
        ApiKeysFile = parse.GetValue(_keys),
        InsecureNoAuth = parse.GetValue(_insecure),
        TlsCertificateFile = parse.GetValue(_cert),
        TlsKeyFile = parse.GetValue(_key),
        Limits = options.Limits with
        {
            MaxPromptTokens = parse.GetValue(_prompt),
            MaxTokensLimit = parse.GetValue(_maxTokens),
            MaxTerms = parse.GetValue(_terms),
            MaxReadoutFeatures = parse.GetValue(_features),
            MaxRequestBodyBytes = parse.GetValue(_body),
            MaxGrpcMessageBytes = parse.GetValue(_message),
            RequestHeadersTimeout = TimeSpan.FromSeconds(parse.GetValue(_headers)),
            MinRequestBodyBytesPerSecond = parse.GetValue(_rate),
            MaxStreamsPerKey = parse.GetValue(_streams),
            TokensPerMinutePerKey = parse.GetValue(_tokens),
        },
    };
}
