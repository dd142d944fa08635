using System.Diagnostics;
using FeatureFlow.Engine;
using FeatureFlow.LlamaCpp;
using FeatureFlow.Steering;
using Microsoft.ML.OnnxRuntimeGenAI;

namespace FeatureFlow.Benchmarks;

/// <summary>
/// One greedy single-stream generation, timed from the request to its first token and to its last.
/// <see cref="ModelMsPerStep"/> and <see cref="AllocatedBytesPerToken"/> come from our engine's figures only.
/// </summary>
public sealed record RunResult(IReadOnlyList<int> Tokens, double FirstTokenSeconds, double TotalSeconds,
    double? ModelMsPerStep = null, double? AllocatedBytesPerToken = null)
{
    /// <summary>Decode rate: the tokens after the first over the time after the first (prefill excluded).</summary>
    public double DecodeTokensPerSecond => (Tokens.Count - 1) / (TotalSeconds - FirstTokenSeconds);

    /// <summary>A run of our engine, with its model time and allocation per decode step between two figures.</summary>
    public static RunResult OfEngine(IReadOnlyList<int> tokens, double first, double total, EngineFigures before,
        EngineFigures after)
    {
        var steps = Math.Max(1, after.DecodeSteps - before.DecodeSteps);
        return new RunResult(tokens, first, total,
            1000 * (after.DecodeModelSeconds - before.DecodeModelSeconds) / steps,
            (after.DecodeAllocatedBytes - before.DecodeAllocatedBytes) / (double)steps);
    }
}

/// <summary>An engine under test: greedy decoding of up to maxTokens after promptIds (BOS included, used verbatim).</summary>
public interface IContender : IDisposable
{
    string Name { get; }
    Task<RunResult> RunAsync(int[] promptIds, int maxTokens);
}

/// <summary>Our in-process <see cref="GenerationEngine"/>, unsteered or with one steering spec on every token.</summary>
/// <param name="engine">The engine for a run: the same one each time, or an <see cref="EngineSlot"/>'s current one.</param>
public sealed class OursContender(string name, Func<GenerationEngine> engine, SteeringSpec steering) : IContender
{
    public OursContender(string name, GenerationEngine engine, SteeringSpec steering) : this(name, () => engine, steering)
    {
    }

    public string Name { get; } = name;

    public Task<RunResult> RunAsync(int[] promptIds, int maxTokens) => RunAsync(engine(), promptIds, maxTokens);

    private async Task<RunResult> RunAsync(GenerationEngine engine, int[] promptIds, int maxTokens)
    {
        var request = new GenerationRequest
        {
            PromptIds = promptIds,
            MaxTokens = maxTokens,
            Sampling = new SamplingOptions { Temperature = 0f },
            Steering = steering,
        };
        var before = engine.Figures();
        var tokens = new List<int>(maxTokens);
        var clock = Stopwatch.StartNew();
        double first = 0;
        await foreach (var update in engine.GenerateAsync(request))
        {
            if (tokens.Count == 0 && update.TokenIds.Count > 0) first = clock.Elapsed.TotalSeconds;
            tokens.AddRange(update.TokenIds);
        }
        var total = clock.Elapsed.TotalSeconds;
        return RunResult.OfEngine(tokens, first, total, before, engine.Figures());
    }

    public void Dispose() { }
}

/// <summary>
/// <paramref name="streams"/> copies of one greedy request submitted together to our engine: the aggregate rate of a
/// batch. The result's tokens are every stream's tokens one after another, so its decode rate counts them all (after
/// the first token of any stream, over the time after it).
/// </summary>
public sealed class OursStreamsContender(string name, GenerationEngine engine, SteeringSpec steering, int streams)
    : IContender
{
    public string Name { get; } = name;

    public async Task<RunResult> RunAsync(int[] promptIds, int maxTokens)
    {
        var request = new GenerationRequest
        {
            PromptIds = promptIds, MaxTokens = maxTokens, Sampling = new SamplingOptions { Temperature = 0f },
            Steering = steering,
        };
        var before = engine.Figures();
        var clock = Stopwatch.StartNew();
        var first = double.MaxValue;
        var lockObject = new object();
        var all = await Task.WhenAll(Enumerable.Range(0, streams).Select(async _ =>
        {
            var tokens = new List<int>(maxTokens);
            await foreach (var update in engine.GenerateAsync(request))
            {
                if (tokens.Count == 0 && update.TokenIds.Count > 0)
                    lock (lockObject) first = Math.Min(first, clock.Elapsed.TotalSeconds);
                tokens.AddRange(update.TokenIds);
            }
            return tokens;
        }));
        var total = clock.Elapsed.TotalSeconds;
        return RunResult.OfEngine(all.SelectMany(t => t).ToList(), first, total, before, engine.Figures());
    }

    public void Dispose() { }
}

/// <summary>
/// ONNX Runtime GenAI's own generation loop over the folder's plain decoder.onnx (genai_config.json), on one
/// intra-op thread like our engine. A Generator is GenAI's per-request state, so making it is timed.
/// </summary>
public sealed class GenAiContender : IContender
{
    private readonly Config _config;
    private readonly Model _model;
    private readonly int _bos;
    private readonly int _eos;
    private readonly int _threads;

    public GenAiContender(string modelDirectory, int bos, int eos, int threads = 1)
    {
        _config = new Config(modelDirectory);
        _config.Overlay("{\"model\":{\"decoder\":{\"session_options\":{\"intra_op_num_threads\":" + threads + "}}}}");
        _threads = threads;
        _model = new Model(_config);
        (_bos, _eos) = (bos, eos);
    }

    public string Name => $"ONNX Runtime GenAI 0.18 (decoder.onnx, {_threads} thread{(_threads == 1 ? "" : "s")})";

    public Task<RunResult> RunAsync(int[] promptIds, int maxTokens)
    {
        var tokens = new List<int>(maxTokens);
        var clock = Stopwatch.StartNew();
        double first = 0;
        using (var parameters = new GeneratorParams(_model))
        {
            parameters.SetSearchOption("do_sample", false);
            parameters.SetSearchOption("max_length", promptIds.Length + maxTokens);
            using var generator = new Generator(_model, parameters);
            generator.AppendTokens(promptIds);
            while (!generator.IsDone())
            {
                generator.GenerateNextToken();
                var next = generator.GetNextTokens()[0];
                if (tokens.Count == 0) first = clock.Elapsed.TotalSeconds;
                // Our engine and llama2.c's run.c end a story at BOS as well as EOS; GenAI only at EOS.
                if (next == _bos || next == _eos) break;
                tokens.Add(next);
            }
        }
        return Task.FromResult(new RunResult(tokens, first, clock.Elapsed.TotalSeconds));
    }

    public void Dispose()
    {
        _model.Dispose();
        _config.Dispose();
    }
}

/// <summary>
/// llama.cpp through LLamaSharp on the same weights as GGUF (<see cref="LlamaCppPeer"/>): greedy, our token ids fed
/// verbatim, llama.cpp's default cache and attention settings. The clock starts once the context (llama.cpp's KV
/// cache) is made, as our engine's cache is made at start-up.
/// </summary>
public sealed class LlamaCppContender(string ggufPath, int threads = 1) : IContender
{
    private readonly LlamaCppPeer _peer = new(ggufPath, threads);

    public string Name => $"llama.cpp via LLamaSharp 0.30 (GGUF, {_peer.Threads} thread{(_peer.Threads == 1 ? "" : "s")})";

    public Task<RunResult> RunAsync(int[] promptIds, int maxTokens)
    {
        var clock = new Stopwatch();
        double first = 0;
        var tokens = _peer.Greedy(promptIds, maxTokens, started: clock.Start,
            sampled: () => first = clock.Elapsed.TotalSeconds);
        return Task.FromResult(new RunResult(tokens, first, clock.Elapsed.TotalSeconds));
    }

    public void Dispose() => _peer.Dispose();
}

/// <summary>
/// An engine opened anew on request (<see cref="Renew"/>, between rounds), so that where its weights land in memory,
/// which moves a memory-bound step by up to 10 % on a shared machine and stays put for an engine's lifetime, is
/// sampled once per round instead of once per benchmark.
/// </summary>
public sealed class EngineSlot(Func<GenerationEngine> open) : IDisposable
{
    private GenerationEngine? _current;

    public GenerationEngine Current => _current ??= open();

    public void Renew()
    {
        _current?.Dispose();
        _current = open();
    }

    public void Dispose() => _current?.Dispose();
}

/// <summary>
/// A contender made anew for every run and disposed after it, for the same reason as <see cref="EngineSlot"/>; its
/// first generation is an untimed warm-up of the same request (model loading, allocator growth), the second is timed.
/// </summary>
public sealed class FreshContender : IContender
{
    private readonly Func<IContender> _make;
    private IContender? _next;

    public FreshContender(Func<IContender> make)
    {
        _make = make;
        _next = make();
        Name = _next.Name;
    }

    public string Name { get; }

    public async Task<RunResult> RunAsync(int[] promptIds, int maxTokens)
    {
        using var contender = _next ?? _make();
        _next = null;
        await contender.RunAsync(promptIds, maxTokens);
        return await contender.RunAsync(promptIds, maxTokens);
    }

    public void Dispose() => _next?.Dispose();
}
