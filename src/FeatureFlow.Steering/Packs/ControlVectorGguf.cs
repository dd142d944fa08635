using System.Text;
using FeatureFlow.Models;

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
    private const uint Version = 3, Alignment = 32;
    private const uint TypeUInt32 = 4, TypeString = 8, TensorF32 = 0;

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

        using var stream = File.Create(path);
        using var w = new BinaryWriter(stream, Encoding.UTF8);
        w.Write("GGUF"u8);
        w.Write(Version);
        w.Write((ulong)directions.Count);
        w.Write(3UL);
        WriteString(w, "general.architecture"); w.Write(TypeString); WriteString(w, "controlvector");
        WriteString(w, "controlvector.model_hint"); w.Write(TypeString); WriteString(w, modelHint);
        WriteString(w, "controlvector.layer_count"); w.Write(TypeUInt32); w.Write((uint)layers);
        ulong offset = 0;
        foreach (var (layer, v) in directions)
        {
            WriteString(w, $"direction.{layer}");
            w.Write(1u);
            w.Write((ulong)v.Length);
            w.Write(TensorF32);
            w.Write(offset);
            offset += Align((ulong)v.Length * 4);
        }
        Pad(w);
        foreach (var v in directions.Values)
        {
            foreach (var x in v) w.Write(x);
            Pad(w);
        }
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
        using var r = new BinaryReader(File.OpenRead(path), Encoding.UTF8);
        try
        {
            if (Encoding.ASCII.GetString(r.ReadBytes(4)) != "GGUF") throw new InvalidDataException($"{path}: not a GGUF file");
            var version = r.ReadUInt32();
            if (version is < 2 or > 3) throw new InvalidDataException($"{path}: GGUF version {version} is not supported");
            var tensorCount = r.ReadUInt64();
            var kvCount = r.ReadUInt64();
            var alignment = Alignment;
            for (ulong i = 0; i < kvCount; i++)
            {
                var key = ReadString(r);
                var value = ReadValue(r, r.ReadUInt32());
                if (key == "general.architecture" && value as string != "controlvector")
                    throw new InvalidDataException($"{path}: general.architecture is '{value}', not 'controlvector'");
                if (key == "general.alignment" && value is uint a) alignment = a;
            }
            var infos = new List<(string Name, ulong Length, ulong Offset)>();
            for (ulong i = 0; i < tensorCount; i++)
            {
                var name = ReadString(r);
                var dims = r.ReadUInt32();
                var shape = Enumerable.Range(0, (int)dims).Select(_ => r.ReadUInt64()).ToArray();
                var type = r.ReadUInt32();
                var offset = r.ReadUInt64();
                if (type != TensorF32 || dims != 1) throw new InvalidDataException($"{path}: tensor '{name}' must be a 1-D F32 vector");
                infos.Add((name, shape[0], offset));
            }
            var dataStart = (r.BaseStream.Position + alignment - 1) / alignment * alignment;
            var terms = new List<SteeringTerm>();
            var ignored = new List<string>();
            foreach (var (name, length, offset) in infos)
            {
                if (!name.StartsWith("direction.", StringComparison.Ordinal)
                    || !int.TryParse(name["direction.".Length..], out var n) || n < 0)
                    throw new InvalidDataException(
                        $"{path}: unexpected tensor '{name}' (control vectors hold direction.N)");
                if (n >= layers)
                    throw new InvalidDataException(
                        $"{path}: '{name}' steers block {n}, which the model (blocks 0..{layers - 1}) does not have");
                if ((int)length != dModel)
                    throw new InvalidDataException(
                        $"{path}: '{name}' has {length} values; the model's d_model is {dModel}");
                if (n == 0)
                {
                    ignored.Add($"{name}: llama.cpp never applies it "
                        + "(control vectors start at block 1; its loader refuses the file)");
                    continue;
                }
                r.BaseStream.Position = dataStart + (long)offset;
                var v = Enumerable.Range(0, dModel).Select(_ => r.ReadSingle()).ToArray();
                terms.Add(new SteeringTerm(new Site(n, SiteKind.ResidPost), SteeringOperation.Add, 1f,
                    new FeatureVector(v)));
            }
            return new ControlVectorContents(terms.OrderBy(t => t.Site.Layer).ToArray(), ignored);
        }
        catch (EndOfStreamException)
        {
            throw new InvalidDataException($"{path}: truncated GGUF file");
        }
    }

    private static ulong Align(ulong n) => (n + Alignment - 1) / Alignment * Alignment;

    private static void Pad(BinaryWriter w)
    {
        while (w.BaseStream.Position % Alignment != 0) w.Write((byte)0);
    }

    private static void WriteString(BinaryWriter w, string s)
    {
        var bytes = Encoding.UTF8.GetBytes(s);
        w.Write((ulong)bytes.Length);
        w.Write(bytes);
    }

    private static string ReadString(BinaryReader r) => Encoding.UTF8.GetString(r.ReadBytes(checked((int)r.ReadUInt64())));

    private static object ReadValue(BinaryReader r, uint type) => type switch
    {
        0 => r.ReadByte(), 1 => r.ReadSByte(), 2 => r.ReadUInt16(), 3 => r.ReadInt16(), 4 => r.ReadUInt32(), 5 => r.ReadInt32(),
        6 => r.ReadSingle(), 7 => r.ReadByte() != 0, 8 => ReadString(r),
        9 => ReadArray(r), 10 => r.ReadUInt64(), 11 => r.ReadInt64(), 12 => r.ReadDouble(),
        _ => throw new InvalidDataException($"unknown GGUF value type {type}"),
    };

    private static object ReadArray(BinaryReader r)
    {
        var type = r.ReadUInt32();
        var count = r.ReadUInt64();
        return Enumerable.Range(0, checked((int)count)).Select(_ => ReadValue(r, type)).ToArray();
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
