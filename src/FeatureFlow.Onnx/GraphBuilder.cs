using FeatureFlow.Onnx.Ir;
using Google.Protobuf;
using DataType = FeatureFlow.Onnx.Ir.TensorProto.Types.DataType;

namespace FeatureFlow.Onnx;

/// <summary>
/// Builds an ONNX graph node by node. Values are referred to by name; every generated name is
/// derived from the current scope and a counter, so the same build always yields the same bytes.
/// </summary>
public sealed class GraphBuilder
{
    private readonly GraphProto _graph;
    private readonly Stack<string> _scopes = new();
    private readonly Dictionary<string, int> _counters = new();
    private readonly HashSet<string> _names = new();
    private readonly ExternalDataFile? _externalData;

    /// <param name="graphName">The graph's name.</param>
    /// <param name="externalData">Where initializers of its minimum size or more go; null keeps every one inline.</param>
    public GraphBuilder(string graphName, ExternalDataFile? externalData = null)
    {
        _graph = new GraphProto { Name = graphName };
        _externalData = externalData;
    }

    /// <summary>Prefixes generated node and value names until disposed (readable graphs in Netron).</summary>
    public IDisposable Scope(string name)
    {
        _scopes.Push(name);
        return new PopScope(_scopes);
    }

    public string Input(string name, DataType type, params object[] dims)
    {
        Claim(name);
        _graph.Input.Add(ValueInfo(name, type, dims));
        return name;
    }

    /// <summary>Declares <paramref name="value"/> a graph output under <paramref name="name"/>.</summary>
    public string Output(string value, string name, DataType type, params object[] dims)
    {
        if (value != name) Node("Identity", [value], [name]);
        _graph.Output.Add(ValueInfo(name, type, dims));
        return name;
    }

    public string Initializer(string name, ReadOnlySpan<float> data, params long[] dims)
    {
        Claim(name);
        var expected = dims.Aggregate(1L, (a, d) => a * d);
        if (expected != data.Length)
            throw new ArgumentException($"initializer '{name}': {data.Length} values for shape [{string.Join(",", dims)}]");
        var tensor = new TensorProto { Name = name, DataType = (int)DataType.Float };
        tensor.Dims.AddRange(dims);
        var bytes = System.Runtime.InteropServices.MemoryMarshal.AsBytes(data);
        if (_externalData is not null && bytes.Length >= _externalData.MinimumBytes)
            _externalData.Reference(tensor, bytes);
        else
            tensor.RawData = ByteString.CopyFrom(bytes);
        _graph.Initializer.Add(tensor);
        return name;
    }

    public string ConstInt64(params long[] values) => ConstInt64(values, [values.Length]);

    public string ScalarInt64(long value) => ConstInt64([value], []);

    public string ScalarFloat(float value)
    {
        var name = NewName("const");
        var tensor = new TensorProto { Name = name, DataType = (int)DataType.Float };
        tensor.FloatData.Add(value);
        _graph.Initializer.Add(tensor);
        return name;
    }

    private string ConstInt64(long[] values, long[] dims)
    {
        var name = NewName("const");
        var tensor = new TensorProto { Name = name, DataType = (int)DataType.Int64 };
        tensor.Dims.AddRange(dims);
        tensor.Int64Data.AddRange(values);
        _graph.Initializer.Add(tensor);
        return name;
    }

    /// <summary>Adds a node with one output and returns that output's name.</summary>
    public string Op(string opType, string[] inputs, params AttributeProto[] attributes) =>
        Node(opType, inputs, [NewName(opType, claim: false)], attributes)[0];

    /// <summary>As <see cref="Op(string, string[], AttributeProto[])"/> for an operator outside the default domain.
    /// </summary>
    public string DomainOp(string domain, string opType, string[] inputs, params AttributeProto[] attributes) =>
        DomainNode(domain, opType, inputs, [NewName(opType, claim: false)], attributes)[0];

    /// <summary>Adds a node with several outputs.</summary>
    public string[] Op(string opType, string[] inputs, int outputCount, params AttributeProto[] attributes) =>
        Node(opType, inputs, Enumerable.Range(0, outputCount).Select(_ => NewName(opType, claim: false)).ToArray(), attributes);

    /// <summary>Adds a node whose outputs carry the given (already meaningful) names.</summary>
    public string[] Node(string opType, string[] inputs, string[] outputs, params AttributeProto[] attributes) =>
        DomainNode("", opType, inputs, outputs, attributes);

    /// <summary>
    /// As <see cref="Node"/> for an operator outside the default ONNX domain (e.g. "com.microsoft"); the model
    /// must import that domain's opset (<see cref="OnnxModelOptions.DomainOpsets"/>).
    /// </summary>
    public string[] DomainNode(string domain, string opType, string[] inputs, string[] outputs,
        params AttributeProto[] attributes)
    {
        foreach (var o in outputs.Where(o => o.Length > 0)) Claim(o); // "" leaves an optional output unwritten
        var node = new NodeProto { OpType = opType, Name = NodeName(opType), Domain = domain };
        node.Input.AddRange(inputs);
        node.Output.AddRange(outputs);
        node.Attribute.AddRange(attributes);
        _graph.Node.Add(node);
        return outputs;
    }

    public ModelProto Build(OnnxModelOptions options)
    {
        var model = new ModelProto
        {
            IrVersion = options.IrVersion,
            ProducerName = options.ProducerName,
            ProducerVersion = options.ProducerVersion,
            DocString = options.DocString,
            Graph = _graph,
        };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = options.Opset });
        foreach (var (domain, version) in options.DomainOpsets)
            model.OpsetImport.Add(new OperatorSetIdProto { Domain = domain, Version = version });
        foreach (var (key, value) in options.Metadata)
            model.MetadataProps.Add(new StringStringEntryProto { Key = key, Value = value });
        return model;
    }

    private string NodeName(string opType) => NewName(opType + "_node", claim: false);

    private string NewName(string stem, bool claim = true)
    {
        var prefix = _scopes.Count == 0 ? stem : string.Join("/", _scopes.Reverse()) + "/" + stem;
        _counters.TryGetValue(prefix, out var n);
        _counters[prefix] = n + 1;
        var name = n == 0 ? prefix : $"{prefix}_{n}";
        if (claim) Claim(name);
        return name;
    }

    private void Claim(string name)
    {
        if (!_names.Add(name)) throw new InvalidOperationException($"value name '{name}' is defined twice");
    }

    private static ValueInfoProto ValueInfo(string name, DataType type, object[] dims)
    {
        var shape = new TensorShapeProto();
        foreach (var d in dims)
        {
            shape.Dim.Add(d switch
            {
                string p => new TensorShapeProto.Types.Dimension { DimParam = p },
                int v => new TensorShapeProto.Types.Dimension { DimValue = v },
                long v => new TensorShapeProto.Types.Dimension { DimValue = v },
                _ => throw new ArgumentException($"dimension {d} of '{name}' must be an int, long or string"),
            });
        }
        return new ValueInfoProto
        {
            Name = name,
            Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)type, Shape = shape } },
        };
    }

    private sealed class PopScope(Stack<string> scopes) : IDisposable
    {
        public void Dispose() => scopes.Pop();
    }
}

public sealed record OnnxModelOptions
{
    public long IrVersion { get; init; } = 8;
    public long Opset { get; init; } = 17;
    public string ProducerName { get; init; } = "featureflow";
    public string ProducerVersion { get; init; } = "0.1";
    public string DocString { get; init; } = "";
    public IReadOnlyList<KeyValuePair<string, string>> Metadata { get; init; } = [];
    /// <summary>Opsets of further operator domains, imported after the default one (none: nothing written).</summary>
    public IReadOnlyList<KeyValuePair<string, long>> DomainOpsets { get; init; } = [];
}

public static class Attr
{
    public static AttributeProto Int(string name, long value) =>
        new() { Name = name, Type = AttributeProto.Types.AttributeType.Int, I = value };

    public static AttributeProto Float(string name, float value) =>
        new() { Name = name, Type = AttributeProto.Types.AttributeType.Float, F = value };

    public static AttributeProto Ints(string name, params long[] values)
    {
        var a = new AttributeProto { Name = name, Type = AttributeProto.Types.AttributeType.Ints };
        a.Ints.AddRange(values);
        return a;
    }
}
