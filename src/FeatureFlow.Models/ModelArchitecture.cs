using System.Text.Json.Serialization;

namespace FeatureFlow.Models;

/// <summary>How a block normalises the residual stream before attention and the MLP.</summary>
public enum NormKind
{
    /// <summary>x / rms(x) · w (Llama; Gemma scales by 1 + w).</summary>
    RmsNorm,
    /// <summary>(x − mean) / std · w + b (GPT-2).</summary>
    LayerNorm,
}

/// <summary>The MLP's nonlinearity and whether it is gated.</summary>
public enum MlpKind
{
    /// <summary>down(silu(gate(x)) · up(x)) (Llama).</summary>
    SwiGlu,
    /// <summary>proj(gelu_tanh(fc(x))) with biases (GPT-2's gelu_new).</summary>
    Gelu,
    /// <summary>down(gelu_tanh(gate(x)) · up(x)) (Gemma).</summary>
    GeGlu,
}

/// <summary>How token positions enter the model.</summary>
public enum PositionEmbedding
{
    /// <summary>Rotary embedding of queries and keys (<see cref="RotaryConvention"/>).</summary>
    Rotary,
    /// <summary>A learned table added to the token embedding (GPT-2's wpe).</summary>
    Learned,
}

/// <summary>How rotary position embedding pairs up the channels of a head.</summary>
public enum RotaryConvention
{
    /// <summary>Pairs (2i, 2i+1), as llama2.c and Meta's original Llama code do.</summary>
    Interleaved,
    /// <summary>Pairs (i, i + head_size/2) ("rotate_half"), as Hugging Face's Llama, GPT-NeoX and Gemma code do.</summary>
    Half,
}

/// <summary>
/// Everything the exporter and the reference forward pass need to know about a decoder-only
/// transformer's shape. New checkpoint families map onto this; new kinds extend the enums.
/// </summary>
public sealed record ModelArchitecture
{
    public required string Family { get; init; }
    public required int DModel { get; init; }
    public required int HiddenDim { get; init; }
    public required int Layers { get; init; }
    public required int Heads { get; init; }
    public required int KvHeads { get; init; }
    public required int VocabSize { get; init; }
    public required int ContextLength { get; init; }
    public NormKind Norm { get; init; } = NormKind.RmsNorm;
    public float NormEpsilon { get; init; } = 1e-5f;
    public MlpKind Mlp { get; init; } = MlpKind.SwiGlu;
    public PositionEmbedding Positions { get; init; } = PositionEmbedding.Rotary;
    public RotaryConvention Rotary { get; init; } = RotaryConvention.Interleaved;
    public float RotaryTheta { get; init; } = 10000f;
    public bool TiedEmbeddings { get; init; } = true;
    /// <summary>How rotary frequencies are stretched for a longer context; null: not at all (omitted from JSON).</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public RopeScaling? RopeScaling { get; init; }

    /// <summary>
    /// Width of one attention head where it is not d_model / heads (Gemma 2: d 2304, 8 heads of 256); null otherwise.
    /// Left out of the manifest when null, so folders of models without it keep their bytes.
    /// </summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public int? HeadDim { get; init; }

    public int HeadSize => HeadDim ?? DModel / Heads;
    public int KvDim => KvHeads * HeadSize;
    public int QueriesPerKvHead => Heads / KvHeads;

    public void Validate()
    {
        if (DModel <= 0 || HiddenDim <= 0 || Layers <= 0 || Heads <= 0 || KvHeads <= 0 || VocabSize <= 0 || ContextLength <= 0)
            throw new InvalidDataException($"architecture has a non-positive dimension: {this}");
        if (HeadDim is null && DModel % Heads != 0)
            throw new InvalidDataException($"d_model {DModel} is not a multiple of heads {Heads} and no head_dim is given");
        if (HeadDim <= 0) throw new InvalidDataException($"head_dim {HeadDim} is not positive");
        if (Heads % KvHeads != 0) throw new InvalidDataException($"heads {Heads} is not a multiple of kv_heads {KvHeads}");
        if (Positions == PositionEmbedding.Rotary && HeadSize % 2 != 0)
            throw new InvalidDataException($"head size {HeadSize} must be even for rotary embedding");
        if (RopeScaling is not null && Positions != PositionEmbedding.Rotary)
            throw new InvalidDataException($"rope scaling {RopeScaling.Kind} needs rotary positions, not {Positions}");
        RopeScaling?.Validate();
    }
}

/// <summary>The rope-scaling methods whose frequencies we can write exactly (Hugging Face's rope_type names).</summary>
public enum RopeScalingKind
{
    /// <summary>Every inverse frequency divided by the factor (position interpolation).</summary>
    Linear,
    /// <summary>
    /// Dynamic NTK: Hugging Face changes the base only once a sequence passes max_position_embeddings, which is the
    /// context length we export, so within it the frequencies are the unscaled ones.
    /// </summary>
    Dynamic,
    /// <summary>Llama 3.1: low frequencies divided by the factor, high ones kept, a smooth ramp between.</summary>
    Llama3,
    /// <summary>YaRN: an NTK-by-parts ramp between interpolated and extrapolated frequencies, plus an attention factor.
    /// </summary>
    Yarn,
}

/// <summary>
/// A checkpoint's rope scaling with every default already resolved, so the frequencies follow from this record alone
/// (<see cref="Export.RotaryFrequencies"/>). Members a kind does not use are null and omitted from JSON.
/// </summary>
public sealed record RopeScaling
{
    public required RopeScalingKind Kind { get; init; }
    public required double Factor { get; init; }
    /// <summary>Llama3 and Yarn: the context length the model was pretrained with.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public int? OriginalContextLength { get; init; }
    /// <summary>Llama3: wavelengths above original / low_freq_factor are divided by the factor.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public double? LowFreqFactor { get; init; }
    /// <summary>Llama3: wavelengths below original / high_freq_factor are kept.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public double? HighFreqFactor { get; init; }
    /// <summary>Yarn: rotations that bound the ramp (Hugging Face defaults 32 and 1).</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public double? BetaFast { get; init; }
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public double? BetaSlow { get; init; }
    /// <summary>Yarn: whether the ramp's bounds are rounded to whole dimensions (Hugging Face default true).</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public bool? Truncate { get; init; }
    /// <summary>Yarn: the factor that multiplies cos and sin, i.e. the rotated queries and keys.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public double? AttentionFactor { get; init; }

    public void Validate()
    {
        if (!double.IsFinite(Factor) || Factor <= 0)
            throw new InvalidDataException($"rope scaling {Kind}: factor must be a positive number, found {Factor}");
        switch (Kind)
        {
            case RopeScalingKind.Llama3:
                if (OriginalContextLength is not > 0 || LowFreqFactor is not > 0 || HighFreqFactor is not { } high
                    || high <= LowFreqFactor)
                    throw new InvalidDataException("rope scaling llama3 needs original_max_position_embeddings > 0 and "
                        + $"0 < low_freq_factor < high_freq_factor, found {OriginalContextLength}, {LowFreqFactor}, "
                        + $"{HighFreqFactor}");
                break;
            case RopeScalingKind.Yarn:
                if (OriginalContextLength is not > 0 || BetaFast is not > 0 || BetaSlow is not > 0 || Truncate is null
                    || AttentionFactor is not > 0)
                    throw new InvalidDataException("rope scaling yarn needs original_max_position_embeddings, beta_fast, "
                        + $"beta_slow and attention_factor > 0 and truncate, found {this}");
                break;
        }
    }
}
