using FeatureFlow.Steering;

namespace FeatureFlow.Engine;

/// <summary>A validated, tokenized generation request: everything the loop needs and nothing from the wire.</summary>
public sealed record GenerationRequest
{
    public required int[] PromptIds { get; init; }
    public required int MaxTokens { get; init; }
    public SamplingOptions Sampling { get; init; } = new();
    public IReadOnlyList<string> Stop { get; init; } = [];
    public SteeringSpec Steering { get; init; } = SteeringSpec.None;
    /// <summary>
    /// Sites whose (steered) values stream with each token: the values at the position whose logits produced
    /// the token (the prompt's last position for the first token).
    /// </summary>
    public IReadOnlyList<Models.Site> Readout { get; init; } = [];
    /// <summary>How many of the most likely tokens (with log-probabilities) to report per generated token; 0: none.</summary>
    public int TopLogProbs { get; init; }
}

public enum FinishReason
{
    /// <summary>max_tokens reached, or the context is full.</summary>
    Length,
    /// <summary>A stop string, BOS or EOS.</summary>
    Stop,
    Cancelled,
    /// <summary>The row's logits became non-finite (steering drove its activations out of range); the row ended alone.</summary>
    Error,
}

/// <summary>
/// A generation that could not continue; the other rows of its batch are unaffected. <see cref="Code"/> says why,
/// in the form API error codes take.
/// </summary>
public sealed class GenerationFailedException(string message, string code = "generation_failed") : Exception(message)
{
    public string Code { get; } = code;
}

/// <summary>A generation ended because the server is shutting down and its drain time ran out.</summary>
public sealed class EngineShutdownException(string message) : Exception(message);

public sealed record Usage(int PromptTokens, int CompletionTokens);

/// <summary>One streamed piece: new text and token ids since the previous update; the last one has <see cref="Finish"/>.</summary>
public sealed record GenerationUpdate(string Text, IReadOnlyList<int> TokenIds, FinishReason? Finish = null, Usage? Usage = null)
{
    /// <summary>Each token's log-probability under the (steered) model's logits, before temperature and truncation.</summary>
    public IReadOnlyList<float> LogProbs { get; init; } = [];
    /// <summary>Per token, the values of the request's read-out sites, [sites × d_model] in the request's site order.</summary>
    public IReadOnlyList<float[]> SiteValues { get; init; } = [];
    /// <summary>Per token, the request's TopLogProbs most likely tokens and their log-probabilities, most likely first.</summary>
    public IReadOnlyList<TokenLogProb[]> TopLogProbs { get; init; } = [];

    /// <summary>Consecutive updates as one: texts and per-token lists joined, the last finish reason and usage kept.</summary>
    public static GenerationUpdate Merge(IReadOnlyList<GenerationUpdate> updates) => updates.Count == 1 ? updates[0] :
        new GenerationUpdate(string.Concat(updates.Select(u => u.Text)), updates.SelectMany(u => u.TokenIds).ToArray(),
            updates[^1].Finish, updates[^1].Usage)
        {
            LogProbs = updates.SelectMany(u => u.LogProbs).ToArray(),
            SiteValues = updates.SelectMany(u => u.SiteValues).ToArray(),
            TopLogProbs = updates.SelectMany(u => u.TopLogProbs).ToArray(),
        };
}

public readonly record struct TokenLogProb(int Token, float LogProb);

public static class GenerationLimits
{
    /// <summary>The most alternatives a request may ask for per token (OpenAI's limit too).</summary>
    public const int MaxTopLogProbs = 20;
}

/// <summary>What the engine reports about each finished generation (for metrics, logs and tests).</summary>
public sealed record GenerationRecord(long Id, int PromptTokens, int CompletionTokens, int DecodeSteps, FinishReason Finish);
