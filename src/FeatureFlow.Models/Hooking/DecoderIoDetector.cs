using System.Globalization;
using System.Text.RegularExpressions;
using FeatureFlow.Onnx.Ir;
using DataType = FeatureFlow.Onnx.Ir.TensorProto.Types.DataType;

namespace FeatureFlow.Models.Hooking;

/// <summary>
/// Reads a decoder graph's I/O conventions from its inputs and outputs: the token, position and mask inputs by their
/// Hugging Face/GenAI names, the logits output, and the KV cache as a per-layer name pattern, packed
/// ([2, batch, heads, past, head_size]: GenAI's GPT-2) or separate keys and values ([batch, heads, past, head_size]).
/// </summary>
public static partial class DecoderIoDetector
{
    public const string InputIds = "input_ids", PositionIds = "position_ids", AttentionMask = "attention_mask", Logits = "logits";

    public static DecoderIo Detect(GraphProto graph)
    {
        var inputs = graph.Input.ToDictionary(i => i.Name, StringComparer.Ordinal);
        var outputs = graph.Output.ToDictionary(o => o.Name, StringComparer.Ordinal);
        IoTensor Required(Dictionary<string, ValueInfoProto> all, string name, string what) =>
            all.TryGetValue(name, out var v) ? Describe(v)
                : throw new InvalidDataException($"expected a graph {what} named '{name}'; found "
                    + $"{string.Join(", ", all.Keys)}");
        IoTensor? Optional(string name) => inputs.TryGetValue(name, out var v) ? Describe(v) : null;

        var known = new HashSet<string>([InputIds, PositionIds, AttentionMask], StringComparer.Ordinal);
        var past = LayerPatterns(graph.Input.Select(i => i.Name).Where(n => !known.Contains(n)));
        var present = LayerPatterns(graph.Output.Select(o => o.Name).Where(n => n != Logits));
        var kv = Kv(past, present, inputs);
        var kvInputs = Enumerable.Range(0, past.Layers).SelectMany(l => new[] { kv.PastName(l, false), kv.PastName(l, true) }).ToHashSet();
        return new DecoderIo
        {
            InputIds = Required(inputs, InputIds, "input"),
            PositionIds = Optional(PositionIds),
            AttentionMask = Optional(AttentionMask),
            Logits = Required(outputs, Logits, "output"),
            Kv = kv,
            OtherInputs = graph.Input.Where(i => !known.Contains(i.Name) && !kvInputs.Contains(i.Name)).Select(Describe).ToArray(),
        };
    }

    private static KvCacheIo Kv(LayerNames past, LayerNames present, Dictionary<string, ValueInfoProto> inputs)
    {
        if (past.Patterns.Count == 1 && present.Patterns.Count == 1)
        {
            var first = inputs[Name(past.Patterns[0], 0)];
            var shape = Shape(first);
            if (shape.Count != 5 || shape[0] != "2")
                throw new InvalidDataException($"expected the one past input per layer '{first.Name}' to be packed "
                    + $"[2, batch, heads, past, "
                    + $"head_size]; found [{string.Join(", ", shape)}]");
            return new KvCacheIo
            {
                Packing = KvCacheIo.PackedPacking, Past = past.Patterns[0], Present = present.Patterns[0], Type = TypeName(first),
                PastShape = shape, Heads = Size(first, shape, 2), HeadSize = Size(first, shape, 4),
            };
        }
        if (past.Patterns.Count == 2 && present.Patterns.Count == 2)
        {
            var (pastKey, pastValue) = KeyAndValue(past.Patterns, "past");
            var (presentKey, presentValue) = KeyAndValue(present.Patterns, "present");
            var first = inputs[Name(pastKey, 0)];
            var shape = Shape(first);
            if (shape.Count != 4)
                throw new InvalidDataException($"expected past key '{first.Name}' to be [batch, heads, past, "
                    + $"head_size]; found [{string.Join(", ", shape)}]");
            return new KvCacheIo
            {
                Packing = KvCacheIo.SeparatePacking, PastKey = pastKey, PastValue = pastValue, PresentKey = presentKey,
                PresentValue = presentValue, Type = TypeName(first), PastShape = shape, Heads = Size(first, shape, 1),
                HeadSize = Size(first, shape, 3),
            };
        }
        throw new InvalidDataException("expected a KV cache as per-layer inputs and outputs (one packed past_%d/present_%d per layer, or "
            + $"separate key and value); found input patterns [{string.Join(", ", past.Patterns)}] and output patterns "
            + $"[{string.Join(", ", present.Patterns)}]");
    }

    /// <summary>Tells the key pattern from the value pattern by where they differ ("…%d.key" vs "…%d.value", "k" vs "v").</summary>
    private static (string Key, string Value) KeyAndValue(IReadOnlyList<string> patterns, string what)
    {
        var (a, b) = (patterns[0], patterns[1]);
        var head = 0;
        while (head < Math.Min(a.Length, b.Length) && a[head] == b[head]) head++;
        var tail = 0;
        while (tail < Math.Min(a.Length, b.Length) - head && a[^(tail + 1)] == b[^(tail + 1)]) tail++;
        static bool IsKey(string part) => part.Contains("key", StringComparison.OrdinalIgnoreCase) || part.Equals("k", StringComparison.OrdinalIgnoreCase);
        static bool IsValue(string part) => part.Contains("value", StringComparison.OrdinalIgnoreCase) || part.Equals("v", StringComparison.OrdinalIgnoreCase);
        var (partA, partB) = (a[head..^tail], b[head..^tail]);
        if (IsKey(partA) && IsValue(partB)) return (a, b);
        if (IsKey(partB) && IsValue(partA)) return (b, a);
        throw new InvalidDataException($"expected one {what} key and one {what} value pattern; found "
            + $"[{string.Join(", ", patterns)}]");
    }

    /// <summary>Names that differ only in one number, numbered 0 … n−1, grouped into printf patterns (past_%d).</summary>
    private sealed record LayerNames(IReadOnlyList<string> Patterns, int Layers);

    private static LayerNames LayerPatterns(IEnumerable<string> names)
    {
        var indices = new Dictionary<string, SortedSet<int>>(StringComparer.Ordinal);
        foreach (var name in names)
            foreach (Match m in Digits().Matches(name))
            {
                var pattern = name[..m.Index] + "%d" + name[(m.Index + m.Length)..];
                if (!indices.TryGetValue(pattern, out var set)) indices[pattern] = set = [];
                set.Add(int.Parse(m.Value, CultureInfo.InvariantCulture));
            }
        var complete = indices.Where(p => p.Value.Count > 0 && p.Value.Min == 0 && p.Value.Max == p.Value.Count - 1).ToArray();
        var layers = complete.Length == 0 ? 0 : complete.Max(p => p.Value.Count);
        return new LayerNames(complete.Where(p => p.Value.Count == layers).Select(p => p.Key).Order(StringComparer.Ordinal).ToArray(), layers);
    }

    private static string Name(string pattern, int layer) =>
        pattern.Replace("%d", layer.ToString(CultureInfo.InvariantCulture), StringComparison.Ordinal);

    private static int Size(ValueInfoProto value, IReadOnlyList<string> shape, int axis) =>
        int.TryParse(shape[axis], NumberStyles.None, CultureInfo.InvariantCulture, out var n) ? n
            : throw new InvalidDataException($"expected '{value.Name}' to declare a fixed size on axis {axis}; found "
                + $"'{shape[axis]}'");

    private static IoTensor Describe(ValueInfoProto value) => new(value.Name, TypeName(value), Shape(value));

    private static IReadOnlyList<string> Shape(ValueInfoProto value) =>
        value.Type?.TensorType?.Shape?.Dim.Select(d => d.DimParam is { Length: > 0 } p ? p
            : d.HasDimValue ? d.DimValue.ToString(CultureInfo.InvariantCulture) : "?").ToArray() ?? [];

    public static string TypeName(ValueInfoProto value) => TypeName((DataType)(value.Type?.TensorType?.ElemType ?? 0));

    public static string TypeName(DataType type) => type switch
    {
        DataType.Float => "float32",
        DataType.Float16 => "float16",
        DataType.Bfloat16 => "bfloat16",
        DataType.Int64 => "int64",
        DataType.Int32 => "int32",
        DataType.Bool => "bool",
        var t => t.ToString().ToLowerInvariant(),
    };

    [GeneratedRegex(@"\d+")]
    private static partial Regex Digits();
}
