using System.IO.Compression;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.RegularExpressions;

namespace FeatureFlow.Sae.Formats;

/// <summary>
/// NumPy <c>.npy</c> arrays (little-endian float16/32/64, C order) and <c>.npz</c> archives of them —
/// what Gemma Scope ships its SAEs in.
/// </summary>
public static partial class Npy
{
    public sealed record Array(long[] Shape, float[] Values);

    public static Dictionary<string, Array> ReadNpz(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"npz file not found: {path}", path);
        try
        {
            using var zip = ZipFile.OpenRead(path);
            var result = new Dictionary<string, Array>(StringComparer.Ordinal);
            foreach (var entry in zip.Entries)
            {
                if (!entry.Name.EndsWith(".npy", StringComparison.Ordinal)) continue;
                using var stream = entry.Open();
                using var buffer = new MemoryStream();
                stream.CopyTo(buffer);
                result[entry.Name[..^4]] = Read(buffer.ToArray(), $"{path}:{entry.Name}");
            }
            return result;
        }
        catch (InvalidDataException e) when (!e.Message.StartsWith(path, StringComparison.Ordinal))
        {
            throw new InvalidDataException($"{path}: not an npz archive ({e.Message})", e);
        }
    }

    public static Array Read(byte[] bytes, string source)
    {
        if (bytes.Length < 10 || bytes[0] != 0x93 || Encoding.ASCII.GetString(bytes, 1, 5) != "NUMPY")
            throw new InvalidDataException($"{source}: not an .npy array");
        var major = bytes[6];
        var (headerLength, headerStart) = major == 1 ? (BitConverter.ToUInt16(bytes, 8), 10) : ((int)BitConverter.ToUInt32(bytes, 8), 12);
        var header = Encoding.ASCII.GetString(bytes, headerStart, headerLength);
        var descr = DescrPattern().Match(header);
        var shape = ShapePattern().Match(header);
        if (!descr.Success || !shape.Success) throw new InvalidDataException($"{source}: unreadable .npy header {header.Trim()}");
        if (header.Contains("'fortran_order': True", StringComparison.Ordinal)) throw new InvalidDataException($"{source}: Fortran-order arrays are not supported");
        var dims = shape.Groups[1].Value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(long.Parse).ToArray();
        var data = bytes.AsSpan(headerStart + headerLength);
        float[] values = descr.Groups[1].Value switch
        {
            "<f4" => MemoryMarshal.Cast<byte, float>(data).ToArray(),
            "<f2" => MemoryMarshal.Cast<byte, Half>(data).ToArray().Select(h => (float)h).ToArray(),
            "<f8" => MemoryMarshal.Cast<byte, double>(data).ToArray().Select(v => (float)v).ToArray(),
            var other => throw new InvalidDataException($"{source}: dtype {other} is not supported (<f2, <f4, <f8)"),
        };
        if (values.Length != dims.Aggregate(1L, (a, d) => a * d)) throw new InvalidDataException($"{source}: {values.Length} values do not fill shape ({string.Join(", ", dims)})");
        return new Array(dims, values);
    }

    [GeneratedRegex(@"'descr':\s*'([^']+)'")]
    private static partial Regex DescrPattern();

    [GeneratedRegex(@"'shape':\s*\(([^)]*)\)")]
    private static partial Regex ShapePattern();
}
