using FeatureFlow.Onnx;
using DataType = FeatureFlow.Onnx.Ir.TensorProto.Types.DataType;

namespace FeatureFlow.Models.Hooking;

/// <summary>
/// One family of decoder graphs other tools write (a torch.onnx export, ONNX Runtime's fused GPT-2, …): how to tell
/// it, and how to find every block's hook sites in it from the graph's structure. Adding a family is one class.
/// </summary>
public interface IDecoderFamily
{
    /// <summary>Short stable name, written to the manifest (e.g. "torch-gpt2").</summary>
    string Name { get; }

    /// <summary>What a graph of this family looks like, for the error when no family matches.</summary>
    string Expects { get; }

    /// <summary>Whether the graph carries this family's marks (cheap; <see cref="Recognize"/> does the real check).</summary>
    bool Claims(GraphEditor graph);

    /// <summary>
    /// Finds every site, splitting fused nodes that hide one into equivalent plain operators (new names start with
    /// <paramref name="prefix"/>). Throws <see cref="InvalidDataException"/> naming what it expected and what it found
    /// (op type and node name) when the structure is not the family's; it never guesses. <paramref name="hints"/> fill
    /// in what a family's graphs do not carry (a plain Llama's context length); the graph stays the authority.
    /// </summary>
    RecognizedDecoder Recognize(GraphEditor graph, DecoderIo io, string prefix, SourceHints hints);
}

/// <summary>
/// What the configs beside a graph say that some graphs do not show: the context length (no table or cache sized by
/// it) and rope theta (rotary frequencies folded into cos/sin tables). Null when no config says it.
/// </summary>
public sealed record SourceHints(int? ContextLength = null, float? RopeTheta = null)
{
    public static SourceHints None { get; } = new();
}

/// <summary>What recognising a graph yields: its shape, its float type and where each site's value is.</summary>
public sealed record RecognizedDecoder(
    string Family,
    ModelArchitecture Architecture,
    DataType FloatType,
    IReadOnlyList<SiteTap> Sites,
    IReadOnlyList<string> Rewrites);

/// <summary>A site's value in the graph (after any rewrite) and how it was found, for the manifest and the CLI.</summary>
public sealed record SiteTap(Site Site, string Value, string Found);
