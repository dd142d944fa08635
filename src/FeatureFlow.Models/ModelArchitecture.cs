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

    public int HeadSize => DModel / Heads;
    public int KvDim => KvHeads * HeadSize;
    public int QueriesPerKvHead => Heads / KvHeads;

    public void Validate()
    {
        if (DModel <= 0 || HiddenDim <= 0 || Layers <= 0 || Heads <= 0 || KvHeads <= 0 || VocabSize <= 0 || ContextLength <= 0)
            throw new InvalidDataException($"architecture has a non-positive dimension: {this}");
        if (DModel % Heads != 0) throw new InvalidDataException($"d_model {DModel} is not a multiple of heads {Heads}");
        if (Heads % KvHeads != 0) throw new InvalidDataException($"heads {Heads} is not a multiple of kv_heads {KvHeads}");
        if (Positions == PositionEmbedding.Rotary && HeadSize % 2 != 0) throw new InvalidDataException($"head size {HeadSize} must be even for rotary embedding");
    }
}
