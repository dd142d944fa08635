using FeatureFlow.Models;
using FeatureFlow.Models.Formats;
using FeatureFlow.Models.Tokenization;
using FeatureFlow.Steering;

namespace FeatureFlow.Engine;

public sealed record CollectOptions
{
    /// <summary>Stories the model writes itself, each from BOS with its own seed.</summary>
    public int GeneratedSequences { get; init; } = 1000;
    public int SequenceLength { get; init; } = 512;
    /// <summary>Sequences generated together in one batch (= one chunk file per site).</summary>
    public int BatchRows { get; init; } = 50;
    public ulong Seed { get; init; } = 1;
    public float Temperature { get; init; } = 1f;
    public float TopP { get; init; } = 0.9f;
    /// <summary>Text files whose tokens are added to the corpus (BOS + text, in windows of <see cref="SequenceLength"/>).</summary>
    public IReadOnlyList<string> TextFiles { get; init; } = [];
    public bool Float16 { get; init; }
}

/// <summary>
/// <c>featureflow collect</c>: runs the model over a corpus and writes every site's activations
/// (the values the hooked graph exposes at its site outputs, with no steering) in chunked safetensors.
/// </summary>
public static class ActivationCollector
{
    public static CorpusManifest Collect(HookedDecoder decoder, ITokenizer tokenizer, string modelName, CollectOptions options, string outputDirectory, Action<long, long>? progress = null)
    {
        if (decoder.SteeringShape is not { } shape) throw new InvalidOperationException("activation read-out needs the hooked graph");
        if (options.SequenceLength < 2 || options.SequenceLength > decoder.Architecture.ContextLength)
            throw new ArgumentException($"sequence length {options.SequenceLength} must be in 2..{decoder.Architecture.ContextLength}");
        if (options.BatchRows < 1) throw new ArgumentException("batch rows must be at least 1");
        var sites = Site.All(decoder.Architecture.Layers).ToArray();
        Directory.CreateDirectory(Path.Combine(outputDirectory, "tokens"));
        foreach (var s in sites) Directory.CreateDirectory(Path.Combine(outputDirectory, s.HookName));

        var texts = options.TextFiles.Select(f => File.Exists(f) ? File.ReadAllText(f) : throw new FileNotFoundException($"corpus text file not found: {f}", f)).ToArray();
        var windows = texts.SelectMany(t => Windows(tokenizer.Encode(t, addBos: true), options.SequenceLength)).ToArray();
        long total = (long)options.GeneratedSequences * options.SequenceLength + windows.Sum(w => (long)w.Length);
        long done = 0;
        var chunks = new List<CorpusChunk>();

        for (var first = 0; first < options.GeneratedSequences; first += options.BatchRows)
        {
            var rows = Math.Min(options.BatchRows, options.GeneratedSequences - first);
            var (tokens, activations) = Generate(decoder, shape, tokenizer, options, first, rows, sites, () => progress?.Invoke(done += rows, total));
            chunks.Add(WriteChunk(outputDirectory, chunks.Count, rows, options.SequenceLength, tokens, activations, sites, options, $"generated:{first}..{first + rows - 1}"));
        }
        foreach (var window in windows)
        {
            var activations = Read(decoder, shape, window, sites);
            chunks.Add(WriteChunk(outputDirectory, chunks.Count, 1, window.Length, window, activations, sites, options, "text"));
            progress?.Invoke(done += window.Length, total);
        }

        var manifest = new CorpusManifest(modelName, decoder.Architecture.DModel, sites.Select(s => s.HookName).ToArray(),
            options.Float16 ? "F16" : "F32", options.SequenceLength, chunks,
            new CorpusSource(options.GeneratedSequences, options.Seed, options.Temperature, options.TopP, options.TextFiles.Select(Path.GetFileName).ToArray()!));
        manifest.Write(outputDirectory);
        return manifest;
    }

    /// <summary>Token windows of at most <paramref name="length"/>; a window shorter than 2 tokens is dropped.</summary>
    private static IEnumerable<int[]> Windows(int[] ids, int length)
    {
        for (var start = 0; start < ids.Length; start += length)
        {
            var w = ids[start..Math.Min(ids.Length, start + length)];
            if (w.Length >= 2) yield return w;
        }
    }

    /// <summary>Samples <paramref name="rows"/> sequences together from BOS, recording every site at every position.</summary>
    private static (int[] Tokens, float[][] Activations) Generate(HookedDecoder decoder, SteeringShape shape, ITokenizer tokenizer,
        CollectOptions options, int firstRow, int rows, Site[] sites, Action onStep)
    {
        int length = options.SequenceLength, d = decoder.Architecture.DModel, vocab = decoder.Architecture.VocabSize;
        var tokens = new int[rows * length];
        var activations = sites.Select(_ => new float[rows * length * d]).ToArray();
        var samplers = Enumerable.Range(0, rows)
            .Select(r => new Sampler(new SamplingOptions { Temperature = options.Temperature, TopP = options.TopP, Seed = options.Seed + (ulong)(firstRow + r) }))
            .ToArray();
        using var state = decoder.NewState(rows);
        using var identity = decoder.Bind(Enumerable.Range(0, rows).Select(_ => new SteeringTensors(shape)).ToArray());
        var current = Enumerable.Repeat(tokenizer.BosId, rows).ToArray();
        for (var t = 0; t < length; t++)
        {
            var output = decoder.Run(state, current, identity, sites);
            for (var r = 0; r < rows; r++)
            {
                tokens[r * length + t] = current[r];
                for (var s = 0; s < sites.Length; s++)
                    output.Sites[s].AsSpan(r * d, d).CopyTo(activations[s].AsSpan((r * length + t) * d, d));
                current[r] = samplers[r].Sample(output.Logits.AsSpan(r * vocab, vocab));
            }
            onStep();
        }
        return (tokens, activations);
    }

    private static float[][] Read(HookedDecoder decoder, SteeringShape shape, int[] window, Site[] sites)
    {
        using var state = decoder.NewState();
        using var identity = decoder.Bind(new SteeringTensors(shape));
        return decoder.Run(state, window, identity, sites).Sites;
    }

    private static CorpusChunk WriteChunk(string dir, int index, int rows, int length, int[] tokens, float[][] activations, Site[] sites, CollectOptions options, string source)
    {
        var file = $"chunk_{index:D5}.safetensors";
        new SafeTensorsWriter().AddInt32("tokens", tokens, rows, length).Write(Path.Combine(dir, "tokens", file));
        var d = activations[0].Length / (rows * length);
        for (var s = 0; s < sites.Length; s++)
        {
            var writer = new SafeTensorsWriter().Metadata("hook_name", sites[s].HookName);
            if (options.Float16) writer.AddFloat16("activations", activations[s], rows * length, d);
            else writer.AddFloat32("activations", activations[s], rows * length, d);
            writer.Write(Path.Combine(dir, sites[s].HookName, file));
        }
        return new CorpusChunk(file, rows, length, source);
    }
}
