using FeatureFlow.Models;
using FeatureFlow.Models.Formats;

namespace FeatureFlow.Steering.Packs;

/// <summary>
/// llama.cpp control vectors: GGUF with <c>general.architecture = controlvector</c> and one F32 tensor
/// <c>direction.N</c> per steered block. llama.cpp adds direction.N to the output of block N (0-based, the
/// block index it uses everywhere), i.e. to <c>blocks.N.hook_resid_post</c>, at every position. It starts at
/// block 1: its loader refuses direction.0, so block 0's output cannot be steered. Only additive terms at
/// resid_post sites of blocks 1 and up have a llama.cpp equivalent.
/// </summary>
public static class ControlVectorGguf
{
    /// <summary>
    /// The pack's terms that a control vector cannot hold, each with the reason, so that a caller can refuse
    /// (or report) them before anything is written.
    /// </summary>
    public static IReadOnlyList<SkippedTerm> Unexpressible(SteeringPack pack) =>
        pack.Terms.Select(t => Reason(t) is { } reason ? new SkippedTerm(t, reason) : null)
            .OfType<SkippedTerm>().ToArray();

    private static string? Reason(SteeringTerm t) =>
        t.Operation != SteeringOperation.Add
            ? $"{t.Operation.ToString().ToLowerInvariant()} depends on the feature's activation; "
              + "a control vector only adds a fixed vector"
            : t.Site.Kind != SiteKind.ResidPost
                ? "llama.cpp adds control vectors to block outputs (resid_post) only"
                : t.Site.Layer == 0
                    ? "llama.cpp never steers block 0 "
                      + "(control vectors start at block 1; its loader refuses direction.0)"
                    : null;

    /// <summary>
    /// Writes the pack's expressible part (additive resid_post terms at blocks ≥ 1) at
    /// <paramref name="strength"/>, block L's terms summed into direction.L; returns the terms left out, each with
    /// its reason.
    /// </summary>
    public static IReadOnlyList<SkippedTerm> Write(
        SteeringPack pack, float strength, int layers, string modelHint, string path)
    {
        var skipped = Unexpressible(pack);
        var directions = new SortedDictionary<int, float[]>();
        foreach (var t in pack.Terms.Except(skipped.Select(s => s.Term)))
        {
            if (!directions.TryGetValue(t.Site.Layer, out var sum))
                directions[t.Site.Layer] = sum = new float[t.Feature.Decoder.Length];
            for (var i = 0; i < sum.Length; i++) sum[i] += strength * t.Value * t.Feature.Decoder[i];
        }
        if (directions.Count == 0)
            throw new InvalidDataException($"pack '{pack.Name}' has nothing a llama.cpp control vector can hold: "
                + string.Join("; ", skipped));

        var gguf = new GgufWriter()
            .String("general.architecture", "controlvector")
            .String("controlvector.model_hint", modelHint)
            .UInt32("controlvector.layer_count", (uint)layers);
        foreach (var (layer, v) in directions) gguf.Tensor($"direction.{layer}", v, v.Length);
        gguf.Write(path);
        return skipped;
    }

    /// <summary>
    /// Reads direction.N (N ≥ 1) as an additive term at <c>blocks.N.hook_resid_post</c> with coefficient 1, the
    /// block llama.cpp steers with it. A direction.0 is not imported but reported in
    /// <see cref="ControlVectorContents.Ignored"/>: llama.cpp never applies it.
    /// </summary>
    public static ControlVectorContents Read(string path, int dModel, int layers)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"control vector not found: {path}", path);
        var gguf = GgufFile.Open(path);
        if (gguf.Metadata.TryGetValue("general.architecture", out var architecture)
            && architecture as string != "controlvector")
            throw new InvalidDataException($"{path}: general.architecture is '{architecture}', not 'controlvector'");
        var terms = new List<SteeringTerm>();
        var ignored = new List<string>();
        foreach (var tensor in gguf.Tensors)
        {
            var name = tensor.Name;
            if (tensor.Type != GgufWriter.TensorF32 || tensor.Dims.Length != 1)
                throw new InvalidDataException($"{path}: tensor '{name}' must be a 1-D F32 vector");
            if (!name.StartsWith("direction.", StringComparison.Ordinal)
                || !int.TryParse(name["direction.".Length..], out var n) || n < 0)
                throw new InvalidDataException(
                    $"{path}: unexpected tensor '{name}' (control vectors hold direction.N)");
            if (n >= layers)
                throw new InvalidDataException(
                    $"{path}: '{name}' steers block {n}, which the model (blocks 0..{layers - 1}) does not have");
            if (tensor.Elements != dModel)
                throw new InvalidDataException(
                    $"{path}: '{name}' has {tensor.Elements} values; the model's d_model is {dModel}");
            if (n == 0)
            {
                ignored.Add($"{name}: llama.cpp never applies it "
                    + "(control vectors start at block 1; its loader refuses the file)");
                continue;
            }
            terms.Add(new SteeringTerm(new Site(n, SiteKind.ResidPost), SteeringOperation.Add, 1f,
                new FeatureVector(gguf.ReadFloat32(tensor))));
        }
        return new ControlVectorContents(terms.OrderBy(t => t.Site.Layer).ToArray(), ignored);
    }
}

/// <summary>A pack term that <see cref="ControlVectorGguf.Write"/> left out, and why llama.cpp cannot hold it.</summary>
public sealed record SkippedTerm(SteeringTerm Term, string Reason)
{
    public override string ToString() =>
        $"{Term.Operation.ToString().ToLowerInvariant()} at {Term.Site.HookName}: {Reason}";
}

/// <summary>
/// What <see cref="ControlVectorGguf.Read"/> found: the terms llama.cpp would apply, and the tensors it would not
/// (each with the reason).
/// </summary>
public sealed record ControlVectorContents(IReadOnlyList<SteeringTerm> Terms, IReadOnlyList<string> Ignored);
