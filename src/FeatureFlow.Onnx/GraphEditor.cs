using FeatureFlow.Onnx.Ir;

namespace FeatureFlow.Onnx;

/// <summary>
/// Looks up and edits an existing graph (one we did not build): who produces and who reads a value, new nodes
/// spliced in under names nobody uses yet, consumers redirected to a replacement value, and the node list put
/// back into the topological order ONNX requires. Lookups reflect every edit made through this class.
/// </summary>
public sealed class GraphEditor
{
    private readonly Dictionary<string, NodeProto> _producers = new(StringComparer.Ordinal);
    private readonly Dictionary<string, List<NodeProto>> _consumers = new(StringComparer.Ordinal);
    private readonly Dictionary<string, TensorProto> _initializers = new(StringComparer.Ordinal);
    private readonly HashSet<string> _names = new(StringComparer.Ordinal);
    private bool _stale = true;

    public GraphEditor(GraphProto graph) => Graph = graph;

    public GraphProto Graph { get; }

    /// <summary>The node that computes <paramref name="value"/>; null for graph inputs, initializers and unknown names.</summary>
    public NodeProto? Producer(string value)
    {
        Refresh();
        return _producers.GetValueOrDefault(value);
    }

    /// <summary>The nodes that read <paramref name="value"/>, in graph order.</summary>
    public IReadOnlyList<NodeProto> Consumers(string value)
    {
        Refresh();
        return _consumers.TryGetValue(value, out var nodes) ? nodes : [];
    }

    public TensorProto? Initializer(string name)
    {
        Refresh();
        return _initializers.GetValueOrDefault(name);
    }

    public ValueInfoProto? GraphInput(string name) => Graph.Input.FirstOrDefault(i => i.Name == name);

    public bool IsGraphOutput(string name) => Graph.Output.Any(o => o.Name == name);

    /// <summary>True when some value, node or graph input/output already carries <paramref name="name"/>.</summary>
    public bool IsTaken(string name)
    {
        Refresh();
        return _names.Contains(name);
    }

    /// <summary>
    /// <paramref name="stem"/>, or stem_1, stem_2…: the first that no existing name equals or starts with followed by
    /// '/', so that names generated under it (<see cref="GraphBuilder.Scope"/>) cannot collide with the graph's own.
    /// </summary>
    public string UniquePrefix(string stem)
    {
        Refresh();
        for (var n = 0; ; n++)
        {
            var prefix = n == 0 ? stem : $"{stem}_{n}";
            if (!_names.Any(name => name == prefix || name.StartsWith(prefix + "/", StringComparison.Ordinal))) return prefix;
        }
    }

    /// <summary>
    /// Adds a fragment's nodes, initializers, inputs and outputs (e.g. built by a <see cref="GraphBuilder"/>); refuses
    /// any value or node name the graph already has, so nothing is silently shadowed.
    /// </summary>
    public void Merge(GraphProto fragment)
    {
        Refresh();
        var defined = fragment.Node.SelectMany(n => n.Output).Where(o => o.Length > 0)
            .Concat(fragment.Initializer.Select(t => t.Name)).Concat(fragment.Input.Select(i => i.Name));
        foreach (var name in defined)
            if (_names.Contains(name)) throw new InvalidDataException($"graph '{Graph.Name}' already has a value "
                + $"named '{name}'");
        foreach (var node in fragment.Node)
            if (node.Name.Length > 0 && _names.Contains(node.Name))
                throw new InvalidDataException($"graph '{Graph.Name}' already has a node named '{node.Name}'");
        foreach (var output in fragment.Output)
            if (IsGraphOutput(output.Name)) throw new InvalidDataException($"graph '{Graph.Name}' already has an "
                + $"output named '{output.Name}'");
        Graph.Node.AddRange(fragment.Node);
        Graph.Initializer.AddRange(fragment.Initializer);
        Graph.Input.AddRange(fragment.Input);
        Graph.Output.AddRange(fragment.Output);
        _stale = true;
    }

    /// <summary>Adds one node; its name and outputs must be new.</summary>
    public NodeProto AddNode(string domain, string opType, string name, string[] inputs, string[] outputs,
        params AttributeProto[] attributes)
    {
        var node = new NodeProto { Domain = domain, OpType = opType, Name = name };
        node.Input.AddRange(inputs);
        node.Output.AddRange(outputs);
        node.Attribute.AddRange(attributes);
        var fragment = new GraphProto();
        fragment.Node.Add(node);
        Merge(fragment);
        return node;
    }

    public void RemoveNode(NodeProto node)
    {
        // By reference: protobuf messages compare by value, and a node is this node, not one equal to it.
        for (var i = 0; i < Graph.Node.Count; i++)
        {
            if (!ReferenceEquals(Graph.Node[i], node)) continue;
            Graph.Node.RemoveAt(i);
            _stale = true;
            return;
        }
        throw new ArgumentException($"node '{node.Name}' is not in graph '{Graph.Name}'");
    }

    /// <summary>Makes <paramref name="readers"/> read <paramref name="replacement"/> wherever they read <paramref name="value"/>.</summary>
    public void Redirect(string value, string replacement, IEnumerable<NodeProto> readers)
    {
        foreach (var node in readers)
            for (var i = 0; i < node.Input.Count; i++)
                if (node.Input[i] == value) node.Input[i] = replacement;
        _stale = true;
    }

    /// <summary>
    /// Reorders the nodes so every value is computed before it is read, keeping the original order wherever it
    /// already was valid (ready nodes leave in the order they had), so an unedited graph keeps its exact node list.
    /// </summary>
    public void SortTopologically()
    {
        Refresh();
        var nodes = Graph.Node.ToArray();
        var available = new HashSet<string>(Graph.Input.Select(i => i.Name).Concat(_initializers.Keys), StringComparer.Ordinal) { "" };
        var waitingOn = new int[nodes.Length];
        var readers = new Dictionary<string, List<int>>(StringComparer.Ordinal);
        for (var i = 0; i < nodes.Length; i++)
        {
            foreach (var input in ReadValues(nodes[i]).Distinct())
            {
                if (available.Contains(input) || !_producers.ContainsKey(input)) continue;
                waitingOn[i]++;
                if (!readers.TryGetValue(input, out var list)) readers[input] = list = [];
                list.Add(i);
            }
        }
        var ready = new PriorityQueue<int, int>();
        for (var i = 0; i < nodes.Length; i++) if (waitingOn[i] == 0) ready.Enqueue(i, i);
        var order = new List<NodeProto>(nodes.Length);
        while (ready.TryDequeue(out var i, out _))
        {
            order.Add(nodes[i]);
            foreach (var output in nodes[i].Output)
                if (readers.TryGetValue(output, out var list))
                    foreach (var reader in list)
                        if (--waitingOn[reader] == 0) ready.Enqueue(reader, reader);
        }
        if (order.Count != nodes.Length)
        {
            var stuck = nodes.Where((_, i) => waitingOn[i] > 0).Take(3).Select(n => $"{n.OpType} '{n.Name}'");
            throw new InvalidDataException($"graph '{Graph.Name}' has a cycle through {string.Join(", ", stuck)}");
        }
        Graph.Node.Clear();
        Graph.Node.AddRange(order);
    }

    /// <summary>A node's inputs plus the outer values its subgraphs (If/Loop/Scan bodies) read.</summary>
    private static IEnumerable<string> ReadValues(NodeProto node) =>
        node.Input.Concat(node.Attribute.SelectMany(a => a.G is null ? a.Graphs : a.Graphs.Append(a.G))
            .SelectMany(g => g.Node.SelectMany(ReadValues)));

    private void Refresh()
    {
        if (!_stale) return;
        _producers.Clear();
        _consumers.Clear();
        _initializers.Clear();
        _names.Clear();
        foreach (var t in Graph.Initializer)
        {
            _initializers[t.Name] = t;
            _names.Add(t.Name);
        }
        foreach (var i in Graph.Input) _names.Add(i.Name);
        foreach (var o in Graph.Output) _names.Add(o.Name);
        foreach (var node in Graph.Node)
        {
            if (node.Name.Length > 0) _names.Add(node.Name);
            foreach (var output in node.Output.Where(o => o.Length > 0))
            {
                _producers[output] = node;
                _names.Add(output);
            }
            foreach (var input in node.Input.Where(i => i.Length > 0).Distinct())
            {
                if (!_consumers.TryGetValue(input, out var list)) _consumers[input] = list = [];
                list.Add(node);
            }
        }
        _stale = false;
    }
}
