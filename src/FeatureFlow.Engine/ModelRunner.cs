using FeatureFlow.Models;
using FeatureFlow.Models.Export;
using FeatureFlow.Steering;
using Microsoft.ML.OnnxRuntime;

namespace FeatureFlow.Engine;

/// <summary>
/// Runs the batched graph (GroupQueryAttention over a shared KV buffer) one step at a time: a prefill of one
/// row's prompt into its slot, or a decode step of rows 0..n−1 with one token each. Owns the sessions, the KV
/// cache, the steering slots and every input and output buffer; a decode step binds views made once and
/// allocates nothing. Used by the scheduler's loop thread only.
/// </summary>
/// <remarks>
/// When the folder has the batched graph without hooks, both graphs run over the same buffers, and a step in
/// which no row steers (<see cref="SteeringSlots.IsIdentity"/>) and no row reads a site out runs that one, so
/// unsteered traffic pays nothing for the hooks (one SteeringHook node per site, plus an Add per block that forms
/// resid_post, in our exported graphs). All-zero steering makes every hook the exact
/// identity, so a row's logits are the same bits whichever graph runs a step, and batch invariance holds as rows
/// come and go.
/// </remarks>
public sealed class ModelRunner : IModelRunner
{
    private readonly Graph _hooked;
    private readonly Graph? _plain;
    private readonly RunOptions _runOptions = new();
    private readonly RowTensor<long> _tokens, _positions;
    private readonly RowTensor<int> _seqLens;
    private readonly RowTensor<float> _logits;
    private readonly int[] _total = GC.AllocateArray<int>(1, pinned: true);
    private readonly OrtValue _totalValue;
    private readonly long[] _prefillTokens, _prefillPositions;
    private readonly float[] _lastLogits;
    private Graph? _lastStep;
    // The sites the last decode step read out (null after a prefill, or when its graph reads none).
    private bool[]? _lastSites;
    // Site outputs, [rows, 1, d] each, made when a row first asks to read that site.
    private readonly RowTensor<float>?[] _sites;

    /// <param name="graphPath">The batched hooked graph.</param>
    /// <param name="plainGraphPath">The batched graph without hooks; null runs every step on the hooked one.</param>
    /// <param name="weights">The folder's weights, shared by both graphs' sessions (not owned); null: each session
    /// keeps its own.</param>
    public ModelRunner(string graphPath, string? plainGraphPath, ModelArchitecture architecture, EngineOptions options,
        SharedWeights? weights = null)
    {
        Architecture = architecture;
        // The KV cache, steering slots and logits live in pinned host memory, bound in place. On CUDA, ONNX Runtime
        // would copy them to the device and back every step and GroupQueryAttention could not share one buffer,
        // so until device-resident buffers exist this runner is CPU only, and says so rather than run wrongly.
        if (options.ExecutionProvider == ExecutionProviderPreference.Cuda)
            throw new InvalidOperationException("the batching engine runs on CPU for now (its KV cache is host memory); use --provider Cpu or Auto");
        var cpu = options with { ExecutionProvider = ExecutionProviderPreference.Cpu };
        (_hooked, var provider) = OpenBatched(graphPath, cpu, weights, steering: true,
            "a batched hooked graph (it needs seqlens_k and the steering inputs; re-export the model folder)");
        Provider = options.ExecutionProvider == ExecutionProviderPreference.Auto
            ? provider with { Reason = "the batching engine's KV cache is host memory, so it runs on CPU (CUDA support is pending)" }
            : provider;
        if (plainGraphPath is not null)
            _plain = OpenBatched(plainGraphPath, cpu, weights, steering: false,
                $"a batched graph without hooks (it needs {GraphNames.SeqlensK} and no steering inputs)").Graph;
        var inputs = _hooked.Session.InputMetadata;
        SteeringShape = new SteeringShape(architecture.Layers, architecture.DModel, inputs[GraphNames.SteeringDecoder].Dimensions[2]);
        Rows = options.MaxBatchRows;
        Cache = new KvCache(architecture, Rows, options.KvTokenBudget ?? (long)Rows * architecture.ContextLength);
        Steering = new SteeringSlots(SteeringShape, Rows);
        _tokens = new RowTensor<long>(Rows, 1);
        _positions = new RowTensor<long>(Rows, 1);
        _seqLens = new RowTensor<int>(Rows);
        _logits = new RowTensor<float>(Rows, 1, architecture.VocabSize);
        _totalValue = OrtValue.CreateTensorValueFromMemory(OrtMemoryInfo.DefaultInstance, new Memory<int>(_total), []);
        _prefillTokens = GC.AllocateArray<long>(architecture.ContextLength, pinned: true);
        _prefillPositions = GC.AllocateArray<long>(architecture.ContextLength, pinned: true);
        _lastLogits = new float[architecture.VocabSize];
        _sites = new RowTensor<float>?[SteeringShape.Sites];
        _hooked.ReadsSites(SteeringShape.Sites);
    }

    public ModelArchitecture Architecture { get; }
    public ExecutionProviderInfo Provider { get; }
    public SteeringShape SteeringShape { get; }
    /// <summary>Most rows one decode step runs (the KV cache's slots).</summary>
    public int Rows { get; }
    public KvCache Cache { get; }
    public KvLedger Kv => Cache.Ledger;
    public SteeringSlots Steering { get; }
    /// <summary>Whether the last prefill or decode step ran the graph without hooks.</summary>
    public bool LastStepPlain => _plain is not null && _lastStep == _plain;

    /// <summary>The token the row in <paramref name="slot"/> feeds at the next decode step.</summary>
    public void SetNextToken(int slot, int token) => _tokens.Row(slot)[0] = token;

    /// <summary>Moves everything a row owns (KV, steering, next token) into another slot.</summary>
    public void Move(int from, int to)
    {
        Cache.Move(from, to);
        Steering.Move(from, to);
        _tokens.Row(to)[0] = _tokens.Row(from)[0];
    }

    /// <summary>
    /// Runs a whole prompt for the row in <paramref name="slot"/> (its KV starts empty) and returns the logits
    /// of its last position; the values of the <paramref name="readout"/> sites at that position go to
    /// <paramref name="readoutValues"/> ([sites × d]). The span is valid until the next prefill. Runs the graph
    /// without hooks when the slot's steering is the identity and nothing is read out.
    /// </summary>
    public ReadOnlySpan<float> Prefill(int slot, ReadOnlySpan<int> prompt, IReadOnlyList<Site> readout, Span<float> readoutValues)
    {
        var count = prompt.Length;
        Cache.Ledger.Reset(slot);
        if (count > Cache.Ledger.Capacity) throw new ArgumentException($"a {count}-token prompt does not fit the context ({Cache.Ledger.Capacity})");
        for (var i = 0; i < count; i++)
        {
            _prefillTokens[i] = prompt[i];
            _prefillPositions[i] = i;
        }
        _seqLens.Row(slot)[0] = count - 1;
        _total[0] = count;
        using var ids = OrtValue.CreateTensorValueFromMemory(OrtMemoryInfo.DefaultInstance, new Memory<long>(_prefillTokens, 0, count), [1, count]);
        using var positions = OrtValue.CreateTensorValueFromMemory(OrtMemoryInfo.DefaultInstance, new Memory<long>(_prefillPositions, 0, count), [1, count]);
        var graph = Choose(Steering.IsIdentity(slot), readout.Count > 0);
        var binding = graph.Prefill;
        // Prefill logits [1, T, vocab] vary in size: ONNX Runtime allocates them (once per request, not per token).
        binding.BindOutputToDevice(GraphNames.Logits, OrtMemoryInfo.DefaultInstance);
        Bind(binding, graph, ids, positions, _seqLens.RowValue(slot), Cache.Row(slot), Steering.Row(slot), logits: null);
        foreach (var site in readout) binding.BindOutputToDevice(site.HookName, OrtMemoryInfo.DefaultInstance);
        graph.Session.RunWithBinding(_runOptions, binding);
        _lastStep = graph;
        _lastSites = null;
        using (var outputs = binding.GetOutputValues())
        {
            var vocab = Architecture.VocabSize;
            var d = Architecture.DModel;
            outputs[0].GetTensorDataAsSpan<float>().Slice((count - 1) * vocab, vocab).CopyTo(_lastLogits);
            // Outputs come back in binding order: logits, the KV pairs, then the read-out sites.
            for (var i = 0; i < readout.Count; i++)
                outputs[1 + 2 * Architecture.Layers + i].GetTensorDataAsSpan<float>().Slice((count - 1) * d, d).CopyTo(readoutValues.Slice(i * d, d));
        }
        binding.ClearBoundInputs();
        binding.ClearBoundOutputs();
        Cache.Ledger.Advance(slot, count);
        return _lastLogits;
    }

    /// <summary>
    /// One decode step for rows 0..<paramref name="rows"/>−1, each feeding its next token at its own position,
    /// reading out every site whose <paramref name="siteReaders"/> count is positive (see <see cref="SiteValue"/>).
    /// Runs the graph without hooks when no site is read and no row steers. Returns logits [rows, vocab]; the span
    /// is valid until the next decode step.
    /// </summary>
    public ReadOnlySpan<float> Decode(int rows, ReadOnlySpan<int> siteReaders)
    {
        if (rows < 1 || rows > Rows) throw new ArgumentOutOfRangeException(nameof(rows), $"{rows} rows; the cache has {Rows}");
        var longest = 0;
        for (var i = 0; i < rows; i++)
        {
            var past = Cache.Ledger.Length(i);
            if (past >= Cache.Ledger.Capacity) throw new InvalidOperationException($"row {i} is full ({past} tokens)");
            _positions.Row(i)[0] = past;
            _seqLens.Row(i)[0] = past; // GroupQueryAttention's seqlens_k: total length − 1
            longest = Math.Max(longest, past + 1);
        }
        _total[0] = longest;
        var graph = Choose(Steering.AllIdentity(rows), siteReaders.ContainsAnyExcept(0));
        var binding = graph.Decode(rows, out var boundSites, out var made);
        var sitesChanged = false;
        if (boundSites is not null)
            for (var s = 0; s < boundSites.Length; s++) sitesChanged |= boundSites[s] != siteReaders[s] > 0;
        if (made || sitesChanged)
        {
            binding.ClearBoundInputs();
            binding.ClearBoundOutputs();
            Bind(binding, graph, _tokens.Prefix(rows), _positions.Prefix(rows), _seqLens.Prefix(rows),
                Cache.Prefix(rows), Steering.Prefix(rows), _logits.Prefix(rows));
            if (boundSites is not null)
                for (var s = 0; s < boundSites.Length; s++)
                {
                    boundSites[s] = siteReaders[s] > 0;
                    if (boundSites[s])
                    {
                        _sites[s] ??= new RowTensor<float>(Rows, 1, Architecture.DModel);
                        binding.BindOutput(Site.FromIndex(s).HookName, _sites[s]!.Prefix(rows));
                    }
                }
        }
        graph.Session.RunWithBinding(_runOptions, binding);
        _lastStep = graph;
        _lastSites = boundSites;
        for (var i = 0; i < rows; i++) Cache.Ledger.Advance(i, 1);
        return _logits.Leading(rows);
    }

    /// <summary>The value at <paramref name="site"/> of the row in <paramref name="slot"/> from the last decode step.</summary>
    public ReadOnlySpan<float> SiteValue(Site site, int slot) => _lastSites?[site.Index] == true
        ? _sites[site.Index]!.Row(slot)
        : throw new InvalidOperationException($"{site} was not read out");

    /// <summary>
    /// Opens a batched graph and checks that it takes <see cref="GraphNames.SeqlensK"/> and, as its role needs, all
    /// four steering inputs (<paramref name="steering"/>) or none; refuses it naming the file and
    /// <paramref name="expected"/>, and closes it, otherwise.
    /// </summary>
    private static (Graph Graph, ExecutionProviderInfo Provider) OpenBatched(string path, EngineOptions cpu,
        SharedWeights? weights, bool steering, string expected)
    {
        var (session, provider) = SessionFactory.Create(path, cpu, weights);
        var inputs = session.InputMetadata;
        string[] steeringInputs =
        [
            GraphNames.SteeringAdd, GraphNames.SteeringEncoder, GraphNames.SteeringDecoder,
            GraphNames.SteeringCoefficients,
        ];
        if (!inputs.ContainsKey(GraphNames.SeqlensK)
            || steeringInputs.Any(name => inputs.ContainsKey(name) != steering))
        {
            session.Dispose();
            throw new InvalidDataException($"{path}: not {expected}");
        }
        return (new Graph(session, cpu.MaxBatchRows), provider);
    }

    /// <summary>
    /// The graph for a step: without hooks when nothing steers or is read, otherwise the hooked one. Both give a row
    /// the same bits (all-zero steering is each hook's identity). Rows that steer with add vectors alone run the
    /// hooked graph too: its SteeringHook kernel skips the feature terms of rows whose α and β are zero.
    /// </summary>
    private Graph Choose(bool identity, bool reading) => _plain is not null && identity && !reading ? _plain : _hooked;

    /// <summary>Binds a step's inputs and outputs: the steering inputs <paramref name="graph"/> takes (none, or all
    /// four).</summary>
    private void Bind(OrtIoBinding binding, Graph graph, OrtValue ids, OrtValue positions, OrtValue seqLens,
        OrtValue[] kv, OrtValue[] steering, OrtValue? logits)
    {
        binding.BindInput(GraphNames.InputIds, ids);
        binding.BindInput(GraphNames.PositionIds, positions);
        binding.BindInput(GraphNames.SeqlensK, seqLens);
        binding.BindInput(GraphNames.TotalSequenceLength, _totalValue);
        for (var l = 0; l < Architecture.Layers; l++)
        {
            // The same tensor as past and present: GroupQueryAttention appends in place.
            binding.BindInput(GraphNames.PastKey(l), kv[2 * l]);
            binding.BindInput(GraphNames.PastValue(l), kv[2 * l + 1]);
            binding.BindOutput(GraphNames.PresentKey(l), kv[2 * l]);
            binding.BindOutput(GraphNames.PresentValue(l), kv[2 * l + 1]);
        }
        if (graph == _hooked)
        {
            binding.BindInput(GraphNames.SteeringAdd, steering[0]);
            binding.BindInput(GraphNames.SteeringEncoder, steering[1]);
            binding.BindInput(GraphNames.SteeringDecoder, steering[2]);
            binding.BindInput(GraphNames.SteeringCoefficients, steering[3]);
        }
        if (logits is not null) binding.BindOutput(GraphNames.Logits, logits);
    }

    public void Dispose()
    {
        _hooked.Dispose();
        _plain?.Dispose();
        _runOptions.Dispose();
        _totalValue.Dispose();
        Cache.Dispose();
        Steering.Dispose();
        foreach (var t in new IDisposable[] { _tokens, _positions, _seqLens, _logits }) t.Dispose();
        foreach (var t in _sites) t?.Dispose();
    }

    /// <summary>One graph's session, with its own decode and prefill bindings over the runner's buffers.</summary>
    /// <remarks>
    /// One decode binding per row count, bound on first use: rows joining or leaving switch to another binding
    /// instead of binding again (which costs every input's name in managed bytes and a few microseconds), so once
    /// each batch size has run, decoding allocates nothing however rows come and go.
    /// </remarks>
    private sealed class Graph(InferenceSession session, int rows) : IDisposable
    {
        private readonly OrtIoBinding?[] _decode = new OrtIoBinding?[rows + 1];
        private readonly bool[]?[] _boundSites = new bool[]?[rows + 1];
        private int _sites;

        public InferenceSession Session { get; } = session;
        public OrtIoBinding Prefill { get; } = session.CreateIoBinding();

        /// <summary>The graph has site outputs that decode steps may read.</summary>
        public void ReadsSites(int sites) => _sites = sites;

        /// <summary>
        /// The decode binding for <paramref name="rows"/> rows; <paramref name="boundSites"/> says per site whether it
        /// binds that site's output (null for a graph without site outputs); <paramref name="made"/> when it is new and
        /// holds nothing yet.
        /// </summary>
        public OrtIoBinding Decode(int rows, out bool[]? boundSites, out bool made)
        {
            made = _decode[rows] is null;
            if (made)
            {
                _decode[rows] = Session.CreateIoBinding();
                if (_sites > 0) _boundSites[rows] = new bool[_sites];
            }
            boundSites = _boundSites[rows];
            return _decode[rows]!;
        }

        public void Dispose()
        {
            if (Environment.GetEnvironmentVariable("FEATUREFLOW_ORT_PROFILE") is { Length: > 0 })
                Session.EndProfiling();
            foreach (var binding in _decode) binding?.Dispose();
            Prefill.Dispose();
            Session.Dispose();
        }
    }
}
