using Microsoft.AspNetCore.Server.Kestrel.Core;

namespace FeatureFlow.Server.Security;

/// <summary>
/// What one request and one caller may ask of the server; each has a <c>serve</c> flag of the same name in kebab
/// case. Size limits refuse a request naming its field (INVALID_ARGUMENT / 400); per-caller limits refuse with
/// RESOURCE_EXHAUSTED / 429 and a retry hint. Callers are API keys, or client addresses when there are no keys.
/// </summary>
public sealed record ServerLimits
{
    public const int MiB = 1 << 20;

    /// <summary>Prompt tokens (BOS included) one request may send. Null: the context length − 1.</summary>
    public int? MaxPromptTokens { get; init; }
    /// <summary>The largest max_tokens a request may ask for. Null: only the context bounds it.</summary>
    public int? MaxTokensLimit { get; init; }
    /// <summary>Steering terms one request (one Compare arm) may send; a pack term counts as one.</summary>
    public int MaxTerms { get; init; } = 64;
    /// <summary>Features one request may list for read-out (<c>readout.features</c>; <c>watch</c> on Compare).</summary>
    public int MaxReadoutFeatures { get; init; } = 256;
    /// <summary>Bytes of an HTTP request body (Kestrel's MaxRequestBodySize); larger is 413.</summary>
    public long MaxRequestBodyBytes { get; init; } = 4 * MiB;
    /// <summary>Bytes of one gRPC request message (MaxReceiveMessageSize); larger is RESOURCE_EXHAUSTED.</summary>
    public int MaxGrpcMessageBytes { get; init; } = 4 * MiB;
    /// <summary>Time a client has to send all request headers (against slow-loris clients).</summary>
    public TimeSpan RequestHeadersTimeout { get; init; } = TimeSpan.FromSeconds(10);
    /// <summary>Slowest a request body may arrive, after a 5 s grace period; 0 turns the check off.</summary>
    public double MinRequestBodyBytesPerSecond { get; init; } = 240;
    /// <summary>Generate, Compare and completion streams one caller may have running at once.</summary>
    public int MaxStreamsPerKey { get; init; } = 32;
    /// <summary>
    /// Token bucket per caller: a request reserves max_tokens × rows at admission and gets back what its rows did not
    /// generate when its stream ends; the bucket holds one minute's worth and refills continuously. Null: off.
    /// </summary>
    public int? TokensPerMinutePerKey { get; init; }
    /// <summary>The clock token buckets refill by; tests substitute one they move by hand.</summary>
    public TimeProvider Clock { get; init; } = TimeProvider.System;

    /// <summary>Checks the limits at start-up against the model's context, naming the option.</summary>
    public void Validate(int contextLength)
    {
        if (MaxPromptTokens is { } p && (p < 1 || p >= contextLength))
            throw new ArgumentException(
                $"max_prompt_tokens must be in 1..{contextLength - 1} (the context is {contextLength}), got {p}");
        Positive(MaxTokensLimit ?? 1, "max_tokens_limit");
        Positive(MaxTerms, "max_terms");
        if (MaxReadoutFeatures < 0)
            throw new ArgumentException($"max_readout_features must be ≥ 0, got {MaxReadoutFeatures}");
        Positive(MaxRequestBodyBytes, "max_request_body_bytes");
        Positive(MaxGrpcMessageBytes, "max_grpc_message_bytes");
        if (RequestHeadersTimeout <= TimeSpan.Zero)
            throw new ArgumentException($"request_headers_timeout must be positive, got {RequestHeadersTimeout}");
        if (!(MinRequestBodyBytesPerSecond >= 0))
            throw new ArgumentException(
                $"min_request_body_bytes_per_second must be ≥ 0, got {MinRequestBodyBytesPerSecond}");
        Positive(MaxStreamsPerKey, "max_streams_per_key");
        Positive(TokensPerMinutePerKey ?? 1, "tokens_per_minute_per_key");
    }

    private static void Positive(long value, string name)
    {
        if (value < 1) throw new ArgumentException($"{name} must be positive, got {value}");
    }

    /// <summary>Kestrel's limits, server-wide (<see cref="AccessMiddleware"/> lifts the body limit for gRPC).</summary>
    public void ApplyTo(KestrelServerLimits kestrel)
    {
        kestrel.MaxRequestBodySize = MaxRequestBodyBytes;
        kestrel.RequestHeadersTimeout = RequestHeadersTimeout;
        kestrel.MinRequestBodyDataRate = MinRequestBodyBytesPerSecond > 0
            ? new MinDataRate(MinRequestBodyBytesPerSecond, TimeSpan.FromSeconds(5))
            : null;
    }
}
