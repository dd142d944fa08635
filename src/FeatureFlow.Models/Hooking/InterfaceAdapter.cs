using FeatureFlow.Models.Export;
using FeatureFlow.Onnx;
using FeatureFlow.Onnx.Ir;
using DataType = FeatureFlow.Onnx.Ir.TensorProto.Types.DataType;

namespace FeatureFlow.Models.Hooking;

/// <summary>A graph rewritten to our interface, and what was changed at its boundary (empty: nothing).</summary>
public sealed record AdaptedGraph(ModelProto Model, IReadOnlyList<string> Changes);

/// <summary>
/// Gives a third-party decoder graph our engine's interface (<see cref="GraphNames"/>): int64 input_ids [B, T],
/// attention_mask [B, S] and position_ids [B, T]; float32 past_key_values.L.key/value [B, kv_heads, P, head_size] in,
/// present.L.key/value out; float32 logits [B, T, vocab]. Only the boundary changes: int32 token, position and
/// mask inputs are fed through a Cast, a packed past [2, B, H, P, hs] is stacked from the key and value inputs
/// (Unsqueeze, Concat on axis 0) and a packed present split with Gather (axis 0, index 0 and 1), separate KV
/// tensors under other names are renamed, float16 KV and logits are Cast at the boundary, and a graph without
/// position_ids or attention_mask gets the input unread (ONNX Runtime accepts a fed input no node reads), so one
/// runner feeds every graph the same way. A graph already on our interface comes back unchanged. Hooked or not, the
/// same <see cref="DecoderIo"/> gives the same edits, so a hooked graph and its plain source adapt alike.
/// </summary>
public static class InterfaceAdapter
{
    private const string HalfKvChange =
        "KV cache: float32 past inputs Cast to the graph's float16, float16 presents Cast to float32";

    /// <param name="source">The graph (hooked or not); not modified.</param>
    /// <param name="io">The graph's own I/O as <see cref="DecoderIoDetector"/> found it.</param>
    /// <param name="architecture">What the graph computes; its KV heads and head size must match the cache's.</param>
    public static AdaptedGraph Adapt(ModelProto source, DecoderIo io, ModelArchitecture architecture)
    {
        Check(io, architecture);
        var model = source.Clone();
        var edit = new BoundaryEdit(model, new GraphEditor(model.Graph).UniquePrefix("featureflow_io"));
        AdaptIntegers(edit, io);
        if (io.Kv.Packing == KvCacheIo.PackedPacking) AdaptPackedKv(edit, io.Kv, architecture.Layers);
        else AdaptSeparateKv(edit, io.Kv, architecture.Layers);
        if (io.Logits.Type == "float16")
        {
            edit.ReplaceOutput(GraphNames.Logits,
                [Retyped(edit.Output(GraphNames.Logits), GraphNames.Logits, DataType.Float)],
                (g, value, _, target) => g.Node("Cast", [value], [target], Attr.Int("to", (long)DataType.Float)));
            edit.Changes.Add("logits: float16 output Cast to float32");
        }
        if (edit.Changes.Count == 0) return new AdaptedGraph(model, []);
        edit.Commit();
        return new AdaptedGraph(model, edit.Changes);
    }

    /// <summary>What no boundary edit can bridge: inputs our runner does not feed, a cache of another shape.</summary>
    private static void Check(DecoderIo io, ModelArchitecture architecture)
    {
        if (io.OtherInputs.Count > 0)
            throw new InvalidDataException("expected only input_ids, position_ids, attention_mask and the KV cache as "
                + "inputs (our engine feeds nothing else); found also "
                + string.Join(", ", io.OtherInputs.Select(i => $"'{i.Name}' ({i.Type})")));
        if (io.Kv.Heads != architecture.KvHeads || io.Kv.HeadSize != architecture.HeadSize)
            throw new InvalidDataException($"expected the KV cache to hold {architecture.KvHeads} heads of size "
                + $"{architecture.HeadSize}, as the graph's attention does; found {io.Kv.Heads} heads of size "
                + $"{io.Kv.HeadSize}");
        foreach (var (what, type) in new[] { ("the KV cache", io.Kv.Type), ("logits", io.Logits.Type) })
            if (type is not ("float32" or "float16"))
                throw new InvalidDataException($"expected {what} in float32 or float16; found {type}");
        if (io.Logits.Shape.Count is not (0 or 3))
            throw new InvalidDataException($"expected logits [batch, sequence, vocab] for every position; found "
                + $"[{string.Join(", ", io.Logits.Shape)}]");
    }

    private static void AdaptIntegers(BoundaryEdit edit, DecoderIo io)
    {
        var cast = new List<string>();
        foreach (var (input, name) in new[]
                 {
                     (io.InputIds, GraphNames.InputIds), (io.PositionIds, GraphNames.PositionIds),
                     (io.AttentionMask, GraphNames.AttentionMask),
                 })
        {
            if (input is null)
            {
                edit.AddUnreadInput(Unread(edit.Input(GraphNames.InputIds), name));
                edit.Changes.Add($"{name}: added as an int64 input no node reads (the graph has none)");
                continue;
            }
            if (input.Type == "int64") continue;
            if (input.Type != "int32")
                throw new InvalidDataException($"expected {name} as int64 or int32; found {input.Type}");
            edit.ReplaceInput(name, [Retyped(edit.Input(name), name, DataType.Int64)],
                (g, fed) => Cast(g, fed[0], DataType.Int32));
            cast.Add(name);
        }
        if (cast.Count > 0) edit.Changes.Add($"{string.Join(", ", cast)}: int64 inputs Cast to the graph's int32");
    }

    /// <summary>An input for <paramref name="name"/> shaped like input_ids ([B, T]); the mask's second axis is the total
    /// length.</summary>
    private static ValueInfoProto Unread(ValueInfoProto inputIds, string name)
    {
        var input = Retyped(inputIds, name, DataType.Int64);
        if (name == GraphNames.AttentionMask && input.Type.TensorType.Shape?.Dim.Count == 2)
            input.Type.TensorType.Shape.Dim[1] = new TensorShapeProto.Types.Dimension { DimParam = "total_sequence_length" };
        return input;
    }

    private static void AdaptPackedKv(BoundaryEdit edit, KvCacheIo kv, int layers)
    {
        var half = kv.Type == "float16";
        for (var l = 0; l < layers; l++)
        {
            var past = kv.PastName(l, false);
            var pastInput = edit.Input(past);
            edit.ReplaceInput(past,
                [Retyped(pastInput, GraphNames.PastKey(l), DataType.Float, dropFirstAxis: true),
                 Retyped(pastInput, GraphNames.PastValue(l), DataType.Float, dropFirstAxis: true)],
                (g, fed) => g.Op("Concat",
                    fed.Select(f => Unsqueeze0(g, half ? Cast(g, f, DataType.Float16) : f, edit.Opset)).ToArray(),
                    Attr.Int("axis", 0)));
            var present = kv.PresentName(l, false);
            var presentOutput = edit.Output(present);
            edit.ReplaceOutput(present,
                [Retyped(presentOutput, GraphNames.PresentKey(l), DataType.Float, dropFirstAxis: true),
                 Retyped(presentOutput, GraphNames.PresentValue(l), DataType.Float, dropFirstAxis: true)],
                (g, value, index, target) =>
                {
                    if (!half)
                    {
                        g.Node("Gather", [value, g.ScalarInt64(index)], [target], Attr.Int("axis", 0));
                        return;
                    }
                    g.Node("Cast", [g.Op("Gather", [value, g.ScalarInt64(index)], Attr.Int("axis", 0))], [target],
                        Attr.Int("to", (long)DataType.Float));
                });
        }
        edit.Changes.Add($"{kv.Past}: packed [2, batch, heads, past, head_size] stacked from inputs "
            + "past_key_values.%d.key and .value (Unsqueeze, Concat on axis 0)");
        edit.Changes.Add($"{kv.Present}: split into outputs present.%d.key and .value (Gather on axis 0, index 0 and 1)");
        if (half) edit.Changes.Add(HalfKvChange);
    }

    private static void AdaptSeparateKv(BoundaryEdit edit, KvCacheIo kv, int layers)
    {
        var half = kv.Type == "float16";
        var renamed = false;
        for (var l = 0; l < layers; l++)
            foreach (var value in new[] { false, true })
            {
                var (past, ours) = (kv.PastName(l, value), value ? GraphNames.PastValue(l) : GraphNames.PastKey(l));
                var (present, oursOut) =
                    (kv.PresentName(l, value), value ? GraphNames.PresentValue(l) : GraphNames.PresentKey(l));
                if (past == ours && present == oursOut && !half) continue;
                renamed |= past != ours || present != oursOut;
                edit.ReplaceInput(past, [Retyped(edit.Input(past), ours, DataType.Float)],
                    (g, fed) => half ? Cast(g, fed[0], DataType.Float16) : fed[0]);
                edit.ReplaceOutput(present, [Retyped(edit.Output(present), oursOut, DataType.Float)],
                    (g, v, _, target) => g.Node(half ? "Cast" : "Identity", [v], [target],
                        half ? [Attr.Int("to", (long)DataType.Float)] : []));
            }
        if (renamed)
            edit.Changes.Add($"{kv.PastKey}, {kv.PastValue} → past_key_values.%d.key, .value and {kv.PresentKey}, "
                + $"{kv.PresentValue} → present.%d.key, .value (renamed)");
        if (half) edit.Changes.Add(HalfKvChange);
    }

    private static ValueInfoProto Retyped(ValueInfoProto value, string name, DataType type, bool dropFirstAxis = false)
    {
        var copy = value.Clone();
        copy.Name = name;
        copy.Type.TensorType.ElemType = (int)type;
        if (dropFirstAxis && copy.Type.TensorType.Shape is { Dim.Count: > 0 } shape) shape.Dim.RemoveAt(0);
        return copy;
    }

    private static string Cast(GraphBuilder g, string value, DataType to) => g.Op("Cast", [value], Attr.Int("to", (long)to));

    /// <summary>Unsqueeze takes its axes as an input from opset 13 on and as an attribute before.</summary>
    private static string Unsqueeze0(GraphBuilder g, string value, long opset) => opset >= 13
        ? g.Op("Unsqueeze", [value, g.ConstInt64(0)])
        : g.Op("Unsqueeze", [value], Attr.Ints("axes", 0));

    /// <summary>
    /// One adaptation in progress: inputs and outputs leave the graph as they are replaced, new nodes collect in a
    /// fragment under the unique prefix, and <see cref="Commit"/> merges it and restores topological order.
    /// </summary>
    private sealed class BoundaryEdit(ModelProto model, string prefix)
    {
        private readonly GraphProto _graph = model.Graph;
        private readonly GraphProto _source = model.Graph.Clone();
        private readonly GraphBuilder _fragment = new(model.Graph.Name);
        private readonly List<ValueInfoProto> _inputs = [];
        private readonly List<ValueInfoProto> _outputs = [];

        public List<string> Changes { get; } = [];
        public long Opset { get; } = OpsetRequirement.Of(model);

        /// <summary>The source graph's declaration of input <paramref name="name"/>.</summary>
        public ValueInfoProto Input(string name) => _source.Input.FirstOrDefault(i => i.Name == name)
            ?? throw new InvalidDataException($"expected a graph input named '{name}'; found none");

        public ValueInfoProto Output(string name) => _source.Output.FirstOrDefault(o => o.Name == name)
            ?? throw new InvalidDataException($"expected a graph output named '{name}'; found none");

        public void AddUnreadInput(ValueInfoProto input) => _inputs.Add(input);

        /// <summary>
        /// Replaces input <paramref name="old"/> by <paramref name="replacements"/>; <paramref name="feed"/> computes the
        /// old input's value from theirs, and the old input's readers read that instead.
        /// </summary>
        public void ReplaceInput(string old, ValueInfoProto[] replacements, Func<GraphBuilder, string[], string> feed)
        {
            if (_source.Output.Any(o => o.Name == old))
                throw new InvalidDataException($"expected input '{old}' not to be a graph output as well");
            _graph.Input.Remove(_graph.Input.Single(i => i.Name == old));
            _inputs.AddRange(replacements);
            string fed;
            using (_fragment.Scope($"{prefix}/{old}")) fed = feed(_fragment, replacements.Select(r => r.Name).ToArray());
            RenameReaders(old, fed);
        }

        /// <summary>
        /// Replaces output <paramref name="old"/> by <paramref name="replacements"/>, each computed by
        /// <paramref name="derive"/> (old value, replacement index, replacement name). An output keeping its name
        /// (retyped) takes it over: the old value is renamed first.
        /// </summary>
        public void ReplaceOutput(string old, ValueInfoProto[] replacements,
            Action<GraphBuilder, string, int, string> derive)
        {
            _graph.Output.Remove(_graph.Output.Single(o => o.Name == old));
            var value = old;
            if (replacements.Any(r => r.Name == old))
            {
                value = $"{prefix}/{old}/original";
                foreach (var node in _graph.Node)
                    for (var i = 0; i < node.Output.Count; i++)
                        if (node.Output[i] == old) node.Output[i] = value;
                RenameReaders(old, value);
            }
            for (var i = 0; i < replacements.Length; i++)
            {
                using (_fragment.Scope($"{prefix}/{replacements[i].Name}"))
                    derive(_fragment, value, i, replacements[i].Name);
            }
            _outputs.AddRange(replacements);
        }

        public void Commit()
        {
            var fragment = _fragment.Build(new OnnxModelOptions()).Graph;
            fragment.Input.AddRange(_inputs);
            fragment.Output.AddRange(_outputs);
            var editor = new GraphEditor(_graph);
            editor.Merge(fragment);
            editor.SortTopologically();
        }

        /// <summary>Points every node reading <paramref name="old"/> at <paramref name="replacement"/>.</summary>
        private void RenameReaders(string old, string replacement)
        {
            foreach (var node in _graph.Node)
            {
                for (var i = 0; i < node.Input.Count; i++)
                    if (node.Input[i] == old) node.Input[i] = replacement;
                if (node.Attribute.Any(a => a.G is not null || a.Graphs.Count > 0) && ReadsInSubgraph(node, old))
                    throw new InvalidDataException($"{ResidualStreamFamily.Describe(node)} reads '{old}' inside a "
                        + "subgraph; expected the graph's inputs and outputs to be read by top-level nodes only");
            }
        }

        private static bool ReadsInSubgraph(NodeProto node, string value) =>
            node.Attribute.SelectMany(a => a.G is null ? a.Graphs : a.Graphs.Append(a.G))
                .Any(g => g.Node.Any(n => n.Input.Contains(value) || ReadsInSubgraph(n, value)));
    }
}
