namespace FeatureFlow.Models.Export;

/// <summary>What the exporter puts around the model math.</summary>
public sealed record HookedGraphOptions
{
    /// <summary>Insert the steering hook at every site (false writes the plain graph, for comparison and GenAI).</summary>
    public bool Hooks { get; init; } = true;

    /// <summary>Feature slots per site: how many rescale/clamp terms one request can place at one site.</summary>
    public int SlotsPerSite { get; init; } = 8;

    /// <summary>Expose each site's (steered) value as a graph output named after the site, for read-out.</summary>
    public bool SiteOutputs { get; init; } = true;
}

/// <summary>Names of the graph's inputs and outputs; Optimum/GenAI names so other runtimes can drive the plain graph.</summary>
public static class GraphNames
{
    public const string InputIds = "input_ids";
    public const string AttentionMask = "attention_mask";
    public const string PositionIds = "position_ids";
    public const string Logits = "logits";
    public const string SteeringAdd = "steering.add";
    public const string SteeringEncoder = "steering.encoder";
    public const string SteeringDecoder = "steering.decoder";
    public const string SteeringCoefficients = "steering.coefficients";

    public static string PastKey(int layer) => $"past_key_values.{layer}.key";
    public static string PastValue(int layer) => $"past_key_values.{layer}.value";
    public static string PresentKey(int layer) => $"present.{layer}.key";
    public static string PresentValue(int layer) => $"present.{layer}.value";

    /// <summary>Rows of <see cref="SteeringCoefficients"/> ([batch, site, row, slot]).</summary>
    public enum CoefficientRow { EncoderBias = 0, Threshold = 1, Alpha = 2, Beta = 3 }

    public const int CoefficientRows = 4;
}
