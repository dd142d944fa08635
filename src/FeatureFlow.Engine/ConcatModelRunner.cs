using FeatureFlow.Models;
using FeatureFlow.Steering;

namespace FeatureFlow.Engine;

/// <summary>
/// Runs a hooked graph whose KV cache is concatenated each step (past → present, one longer) one row at a time:
/// each slot keeps its own <see cref="DecoderState"/>, and a decode step runs every row alone. This is how hooked
/// third-party graphs (<c>featureflow hook</c>) and folders without a batched graph are served: their attention
/// cannot write rows of different lengths into one shared buffer, so rows do not share a run.
/// </summary>
/// <remarks>
/// Each row's run allocates its present tensors and outputs (the Concat layout makes a new, one-longer cache
/// every step), so this path is correct and concurrent but neither batched nor allocation-free; our own exported
/// folders carry the batched graph and run through <see cref="ModelRunner"/>. Unlike that runner this one
/// honours the CUDA provider: nothing lives in host memory between steps except what ONNX Runtime returns.
/// </remarks>
public sealed class ConcatModelRunner : IModelRunner
{
    private readonly HookedDecoder _hooked;
    private readonly HookedDecoder? _plain;
    private readonly DecoderState?[] _states;
    private readonly int[] _next;
    private readonly float[] _logits;
    private readonly float[] _lastLogits;
    private readonly float[][] _sites;
    private readonly bool[] _read;
    private readonly int[] _oneToken = new int[1];
    private readonly List<Site> _readout = [];

    /// <param name="graphPath">The hooked Concat-layout graph.</param>
    /// <param name="plainGraphPath">The same graph without hooks, run for rows that steer and read out nothing; null
    /// runs every row on the hooked graph.</param>
    public ConcatModelRunner(string graphPath, string? plainGraphPath, ModelArchitecture architecture,
        EngineOptions options, SharedWeights? weights = null)
    {
        Architecture = architecture;
        _hooked = new HookedDecoder(graphPath, architecture, options, weights);
        if (!_hooked.HasHooks)
            throw new InvalidDataException($"{graphPath}: not a hooked graph (it has no steering inputs)");
        if (plainGraphPath is not null)
        {
            _plain = new HookedDecoder(plainGraphPath, architecture, options, weights);
            if (_plain.HasHooks) throw new InvalidDataException($"{plainGraphPath}: expected a graph without hooks");
        }
        Provider = _hooked.Provider;
        SteeringShape = _hooked.SteeringShape!;
        Rows = options.MaxBatchRows;
        Kv = new KvLedger(Rows, architecture.ContextLength,
            options.KvTokenBudget ?? (long)Rows * architecture.ContextLength);
        Steering = new SteeringSlots(SteeringShape, Rows);
        _states = new DecoderState?[Rows];
        _next = new int[Rows];
        _logits = new float[Rows * architecture.VocabSize];
        _lastLogits = new float[architecture.VocabSize];
        _sites = new float[SteeringShape.Sites][];
        _read = new bool[SteeringShape.Sites];
    }

    public ModelArchitecture Architecture { get; }
    public ExecutionProviderInfo Provider { get; }
    public SteeringShape SteeringShape { get; }
    public int Rows { get; }
    public KvLedger Kv { get; }
    public SteeringSlots Steering { get; }
    public bool LastStepPlain { get; private set; }

    public void SetNextToken(int slot, int token) => _next[slot] = token;

    public void Move(int from, int to)
    {
        _states[to]?.Dispose();
        _states[to] = _states[from];
        _states[from] = null;
        _next[to] = _next[from];
        Kv.Move(from, to);
        Steering.Move(from, to);
    }

    public ReadOnlySpan<float> Prefill(int slot, ReadOnlySpan<int> prompt, IReadOnlyList<Site> readout,
        Span<float> readoutValues)
    {
        if (prompt.Length > Kv.Capacity)
            throw new ArgumentException($"a {prompt.Length}-token prompt does not fit the context ({Kv.Capacity})");
        _states[slot]?.Dispose();
        Kv.Reset(slot);
        var state = _states[slot] = (_plain ?? _hooked).NewState();
        var output = Step(slot, state, prompt, readout, plainAllowed: readout.Count == 0);
        var vocab = Architecture.VocabSize;
        output.Logits.AsSpan((prompt.Length - 1) * vocab, vocab).CopyTo(_lastLogits);
        var d = Architecture.DModel;
        for (var i = 0; i < readout.Count; i++)
            output.Sites[i].AsSpan((prompt.Length - 1) * d, d).CopyTo(readoutValues.Slice(i * d, d));
        Kv.Advance(slot, prompt.Length);
        return _lastLogits;
    }

    public ReadOnlySpan<float> Decode(int rows, ReadOnlySpan<int> siteReaders)
    {
        if (rows < 1 || rows > Rows) throw new ArgumentOutOfRangeException(nameof(rows), $"{rows} rows; the runner has {Rows}");
        var readout = _readout;
        readout.Clear();
        for (var s = 0; s < _read.Length; s++)
        {
            _read[s] = siteReaders[s] > 0;
            if (_read[s]) readout.Add(Site.FromIndex(s));
        }
        var vocab = Architecture.VocabSize;
        var d = Architecture.DModel;
        var plainRows = 0;
        for (var i = 0; i < rows; i++)
        {
            if (Kv.Length(i) >= Kv.Capacity) throw new InvalidOperationException($"row {i} is full ({Kv.Length(i)} tokens)");
            _oneToken[0] = _next[i];
            var output = Step(i, _states[i]!, _oneToken, readout, plainAllowed: readout.Count == 0);
            if (LastStepPlain) plainRows++;
            output.Logits.CopyTo(_logits.AsSpan(i * vocab, vocab));
            for (var j = 0; j < readout.Count; j++)
            {
                var site = readout[j].Index;
                if (_sites[site] is null || _sites[site].Length < Rows * d) _sites[site] = new float[Rows * d];
                output.Sites[j].CopyTo(_sites[site].AsSpan(i * d, d));
            }
            Kv.Advance(i, 1);
        }
        LastStepPlain = plainRows == rows;
        return _logits.AsSpan(0, rows * vocab);
    }

    public ReadOnlySpan<float> SiteValue(Site site, int slot) => _read[site.Index]
        ? _sites[site.Index].AsSpan(slot * Architecture.DModel, Architecture.DModel)
        : throw new InvalidOperationException($"{site} was not read out");

    /// <summary>One run of one row: on the graph without hooks when the row steers nothing and reads nothing.</summary>
    private StepOutput Step(int slot, DecoderState state, ReadOnlySpan<int> tokens, IReadOnlyList<Site> readout,
        bool plainAllowed)
    {
        LastStepPlain = _plain is not null && plainAllowed && Steering.IsIdentity(slot);
        return LastStepPlain
            ? _plain!.Run(state, tokens, null, [])
            : _hooked.Run(state, tokens, Steering.Bound(slot), readout);
    }

    public void Dispose()
    {
        foreach (var state in _states) state?.Dispose();
        _hooked.Dispose();
        _plain?.Dispose();
        Steering.Dispose();
    }
}
