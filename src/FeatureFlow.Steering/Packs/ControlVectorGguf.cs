using System.Text;
using FeatureFlow.Models;

namespace FeatureFlow.Steering.Packs;

/// <summary>
/// llama.cpp control vectors: GGUF with <c>general.architecture = controlvector</c> and one F32 tensor
/// <c>direction.N</c> per steered layer, where N is 1-based: direction.N is added to the output of
/// block N−1 (0-based), i.e. to <c>blocks.(N−1).hook_resid_post</c>. Only additive terms at
/// resid_post sites have a llama.cpp equivalent.
/// </summary>
public static class ControlVectorGguf
{
    private const uint Version = 3, Alignment = 32;
    private const uint TypeUInt32 = 4, TypeString = 8, TensorF32 = 0;

    /// <summary>Writes the pack's additive resid_post part at <paramref name="strength"/>; returns the terms that could not be expressed.</summary>
    public static IReadOnlyList<SteeringTerm> Write(SteeringPack pack, float strength, int layers, string modelHint, string path)
    {
        var skipped = pack.Terms.Where(t => t.Operation != SteeringOperation.Add || t.Site.Kind != SiteKind.ResidPost).ToArray();
        var directions = new SortedDictionary<int, float[]>();
        foreach (var t in pack.Terms.Except(skipped))
        {
            if (!directions.TryGetValue(t.Site.Layer, out var sum)) directions[t.Site.Layer] = sum = new float[t.Feature.Decoder.Length];
            for (var i = 0; i < sum.Length; i++) sum[i] += strength * t.Value * t.Feature.Decoder[i];
        }
        if (directions.Count == 0) throw new InvalidDataException($"pack '{pack.Name}' has no additive resid_post terms, the only kind a llama.cpp control vector holds");

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
            WriteString(w, $"direction.{layer + 1}");
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

    /// <summary>Reads direction.N tensors as additive terms at blocks.(N−1).hook_resid_post with coefficient 1.</summary>
    public static IReadOnlyList<SteeringTerm> Read(string path, int dModel, int layers)
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
            foreach (var (name, length, offset) in infos)
            {
                if (!name.StartsWith("direction.", StringComparison.Ordinal) || !int.TryParse(name["direction.".Length..], out var n))
                    throw new InvalidDataException($"{path}: unexpected tensor '{name}' (control vectors hold direction.N)");
                if (n < 1 || n > layers) throw new InvalidDataException($"{path}: '{name}' steers block {n - 1}, which the model (blocks 0..{layers - 1}) does not have");
                if ((int)length != dModel) throw new InvalidDataException($"{path}: '{name}' has {length} values; the model's d_model is {dModel}");
                r.BaseStream.Position = dataStart + (long)offset;
                var v = Enumerable.Range(0, dModel).Select(_ => r.ReadSingle()).ToArray();
                terms.Add(new SteeringTerm(new Site(n - 1, SiteKind.ResidPost), SteeringOperation.Add, 1f, new FeatureVector(v)));
            }
            return terms.OrderBy(t => t.Site.Layer).ToArray();
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
