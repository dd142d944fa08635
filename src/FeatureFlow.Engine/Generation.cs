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

    /// <summary>
    /// The checks every backend makes before anything runs: the prompt's ids, its room in the context, max_tokens,
    /// sampling and stop strings, each refused naming the field. Backends add what only they know (read-out sites,
    /// the KV budget, what they cannot do).
    /// </summary>
    public void ValidateFor(int vocabSize, int contextLength)
    {
        if (PromptIds.Length == 0) throw new FieldValidationException("prompt_token_ids", "the prompt has no tokens");
        for (var i = 0; i < PromptIds.Length; i++)
            if ((uint)PromptIds[i] >= (uint)vocabSize)
                throw new FieldValidationException("prompt_token_ids",
                    $"[{i}] = {PromptIds[i]} is not a token id (vocabulary 0..{vocabSize - 1})");
        if (PromptIds.Length >= contextLength)
            throw new FieldValidationException("prompt",
                $"the prompt has {PromptIds.Length} tokens; the context length is {contextLength}");
        var room = contextLength - PromptIds.Length;
        if (MaxTokens <= 0) throw new FieldValidationException("max_tokens", $"must be positive, got {MaxTokens}");
        if (MaxTokens > room)
            throw new FieldValidationException("max_tokens", $"{MaxTokens} tokens after a {PromptIds.Length}-token "
                + $"prompt exceed the context length {contextLength} (at most {room})");
        var s = Sampling;
        if (!float.IsFinite(s.Temperature) || s.Temperature < 0f)
            throw new FieldValidationException("temperature", $"must be a finite number ≥ 0, got {s.Temperature}");
        if (!(s.TopP > 0f && s.TopP <= 1f)) throw new FieldValidationException("top_p", $"must be in (0, 1], got {s.TopP}");
        if (s.TopK < 0) throw new FieldValidationException("top_k", $"must be ≥ 0 (0 turns it off), got {s.TopK}");
        for (var i = 0; i < Stop.Count; i++)
            if (string.IsNullOrEmpty(Stop[i]))
                throw new FieldValidationException($"stop[{i}]", "stop strings must not be empty");
    }
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
}

/// <summary>
/// What the loop records for one generated token, or for an end without one (<see cref="Token"/> −1): the text
/// that is final after it is <see cref="Text"/>[0, <see cref="TextEnd"/>). Read-out values and alternatives are
/// present only when the request asked for them.
/// </summary>
internal readonly record struct TokenEvent(int Token, float LogProb, char[] Text, int TextEnd, FinishReason? Finish = null,
    float[]? SiteValues = null, TokenLogProb[]? TopLogProbs = null);

public readonly record struct TokenLogProb(int Token, float LogProb);

public static class GenerationLimits
{
    /// <summary>The most alternatives a request may ask for per token (OpenAI's limit too).</summary>
    public const int MaxTopLogProbs = 20;
}

/// <summary>What the engine reports about each finished generation (for metrics, logs and tests).</summary>
public sealed record GenerationRecord(long Id, int PromptTokens, int CompletionTokens, int DecodeSteps, FinishReason Finish);
