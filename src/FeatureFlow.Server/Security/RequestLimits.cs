using FeatureFlow.Api.V1;
using FeatureFlow.Engine;
using FeatureFlow.Steering;

namespace FeatureFlow.Server.Security;

/// <summary>
/// The size limits of <see cref="ServerLimits"/> on one request, each refused as a
/// <see cref="FieldValidationException"/> naming the field and the limit
/// (<c>steering.terms: 70 terms exceed max_terms 64</c>). <see cref="Check(GenerateRequest)"/> runs before a
/// request is mapped, so an oversized one costs no tokenizing or steering compilation.
/// </summary>
public sealed class RequestLimits
{
    private readonly ServerLimits _limits;
    private readonly int _maxPieceBytes;

    public RequestLimits(ServerLimits limits, GenerationEngine engine)
    {
        _limits = limits;
        MaxPromptTokens = limits.MaxPromptTokens ?? engine.Architecture.ContextLength - 1;
        // The most text bytes one token stands for: it bounds a prompt's token count from below without encoding it.
        _maxPieceBytes = engine.LongestPieceBytes;
    }

    public int MaxPromptTokens { get; }

    public void Check(GenerateRequest r)
    {
        CheckPrompt(r.Prompt, r.PromptTokenIds.Count);
        CheckTerms(r.Steering, "steering");
        CheckFeatures(r.Readout?.Features.Count ?? 0, "readout.features");
    }

    public void Check(CompareRequest r)
    {
        CheckPrompt(r.Prompt, r.PromptTokenIds.Count);
        for (var i = 0; i < r.Arms.Count; i++) CheckTerms(r.Arms[i], $"arms[{i}]");
        CheckFeatures(r.Readout?.Features.Count ?? 0, "readout.features");
        CheckFeatures(r.Watch.Count, "watch");
    }

    /// <summary>
    /// The mapped request checked for its exact prompt length and its max_tokens. An unset max_tokens (the server's
    /// default) is lowered to max_tokens_limit rather than refused: the client did not ask for more.
    /// </summary>
    public GenerationRequest Apply(GenerationRequest r, bool maxTokensSet, bool promptFromIds)
    {
        if (r.PromptIds.Length > MaxPromptTokens)
            throw new FieldValidationException(promptFromIds ? "prompt_token_ids" : "prompt",
                $"{r.PromptIds.Length} tokens exceed max_prompt_tokens {MaxPromptTokens}");
        if (_limits.MaxTokensLimit is not { } cap || r.MaxTokens <= cap) return r;
        return maxTokensSet
            ? throw new FieldValidationException("max_tokens", $"{r.MaxTokens} exceeds max_tokens_limit {cap}")
            : r with { MaxTokens = cap };
    }

    private void CheckPrompt(string text, int ids)
    {
        if (ids > MaxPromptTokens)
            throw new FieldValidationException("prompt_token_ids",
                $"{ids} tokens exceed max_prompt_tokens {MaxPromptTokens}");
        // Encoding is quadratic in the text's length, so text that cannot fit is refused before it is encoded:
        // BOS, then the dummy-prefix space and the text's bytes, at most _maxPieceBytes of them per token.
        var bytes = System.Text.Encoding.UTF8.GetByteCount(text);
        var atLeast = bytes == 0 ? 1 : 1 + (bytes + 1 + _maxPieceBytes - 1) / _maxPieceBytes;
        if (atLeast > MaxPromptTokens)
            throw new FieldValidationException("prompt",
                $"{bytes} bytes of text make at least {atLeast} tokens, more than max_prompt_tokens {MaxPromptTokens}");
    }

    private void CheckTerms(Api.V1.SteeringSpec? spec, string field)
    {
        if (spec is not null && spec.Terms.Count > _limits.MaxTerms)
            throw new FieldValidationException($"{field}.terms",
                $"{spec.Terms.Count} terms exceed max_terms {_limits.MaxTerms}");
    }

    private void CheckFeatures(int count, string field)
    {
        if (count > _limits.MaxReadoutFeatures)
            throw new FieldValidationException(field,
                $"{count} features exceed max_readout_features {_limits.MaxReadoutFeatures}");
    }
}
