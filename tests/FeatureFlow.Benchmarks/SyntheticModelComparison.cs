using System.Diagnostics;
using System.Numerics;
using System.Runtime.InteropServices;
using System.Text;
using FeatureFlow.Engine;
using FeatureFlow.Models;
using FeatureFlow.Models.Folder;
using FeatureFlow.Models.Formats;
using FeatureFlow.Steering;

namespace FeatureFlow.Benchmarks;

/// <summary>
/// <c>synthetic</c>: single-stream greedy decoding on a Llama-architecture model of about 100M parameters with random
/// weights, written by our own exporter: ours (unsteered, heavy spec) next to ONNX Runtime GenAI on the same
/// decoder.onnx, llama.cpp on the same weights as an F32 GGUF (written by <see cref="LlamaGguf"/>), and the
/// memory-bandwidth floor (weight bytes read per token ÷ this machine's read bandwidth, measured in the same run).
/// At this size a step reads ~400 MB of weights, so bandwidth, not per-operator overhead, bounds it.
/// </summary>
public static class SyntheticModelComparison
{
    public const string SectionHeading =
        "## Single-stream decode on a synthetic 100M-parameter Llama: ours vs ONNX Runtime GenAI vs llama.cpp " +
        "vs the bandwidth floor (issue P8)";

    /// <summary>d 768, 14 layers, 12 heads, hidden 2048 (GPT-2-small widths, Llama blocks): 99.5M parameters with the
    /// shipped 512-token vocabulary, so the shipped tokenizer serves it.</summary>
    public static readonly ModelArchitecture Architecture = new()
    {
        Family = "llama2c", DModel = 768, HiddenDim = 2048, Layers = 14, Heads = 12, KvHeads = 12, VocabSize = 512,
        ContextLength = 512,
    };

    private const string GgufFileName = "synthetic-100m.gguf";
    private const int PromptTokens = 64;
    private const int MaxTokens = 64;

    public sealed record Options(int Rounds, int WarmUps, int Threads, string? WritePath);

    public static async Task<int> RunAsync(Options options, TextWriter output, TextWriter log)
    {
        var root = EngineComparison.RepoRoot();
        var modelDir = Directory.CreateTempSubdirectory("featureflow-synthetic-100m-").FullName;
        try
        {
            Prepare(modelDir, Path.Combine(root, "models", "stories260k", "tok512.bin"), log);
            return await RunAsync(options, modelDir, output, log);
        }
        finally
        {
            Directory.Delete(modelDir, recursive: true);
        }
    }

    private static async Task<int> RunAsync(Options options, string modelDir, TextWriter output, TextWriter log)
    {
        var engineOptions = new EngineOptions
        {
            ExecutionProvider = ExecutionProviderPreference.Cpu, IntraOpThreads = options.Threads, MaxBatchRows = 4,
        };
        // Every engine is opened anew for each round (ours) or run (GenAI, llama.cpp): see EngineSlot.
        using var engines = new EngineSlot(() => new GenerationEngine(ModelFolder.Open(modelDir), engineOptions));
        var shape = engines.Current.SteeringShape;
        var tokenizer = engines.Current.Tokenizer;
        var contenders = new List<IContender>
        {
            new OursContender("ours, unsteered (hook-free batched graph)", () => engines.Current, SteeringSpec.None),
            new OursContender($"ours, heavy spec ({shape.Sites} sites × add + {shape.SlotsPerSite} rescale/clamp slots)",
                () => engines.Current, Workloads.Heavy(shape)),
            new FreshContender(() => new GenAiContender(modelDir, tokenizer.BosId, tokenizer.EosId, options.Threads)),
            new FreshContender(() => new LlamaCppContender(Path.Combine(modelDir, GgufFileName), options.Threads)),
        };
        int[] prompt = [tokenizer.BosId, .. engines.Current.EncodePrompt(Workloads.Story)[1..PromptTokens]];
        var bandwidth = MeasureReadBandwidth(options.Threads);
        await log.WriteLineAsync($"read bandwidth on {options.Threads} thread(s): {bandwidth / 1e9:F1} GB/s");
        // A fresh engine's first generation of each kind binds and plans its steps: run both once, untimed.
        async Task Renew()
        {
            engines.Renew();
            foreach (var ours in contenders.Take(2)) await ours.RunAsync(prompt, MaxTokens);
        }
        var results = await EngineComparison.RunInterleavedAsync(contenders, prompt, MaxTokens, options.Rounds,
            options.WarmUps, log, Renew);
        var engine = engines.Current;
        var steps = LockstepSteps(options, engine, modelDir, prompt, log);
        var memory = WeightMemory(engine.Folder, log);
        var report = Report(options, contenders, results, bandwidth) + steps + memory;
        await output.WriteAsync(report);
        if (options.WritePath is { } path)
        {
            EngineComparison.WriteSection(path, report, SectionHeading);
            await log.WriteLineAsync($"wrote the section to {path}");
        }
        return 0;
    }

    /// <summary>
    /// The steered step's cost without the engine around it and without drift between runs: the folder's two batched
    /// graphs (without hooks; with the custom-operator hooks and the heavy spec) stepped in lockstep, the order
    /// rotating each step, as the <c>hooks</c> benchmark does on stories260K.
    /// </summary>
    private static string LockstepSteps(Options options, GenerationEngine engine, string modelDir, int[] prompt,
        TextWriter log)
    {
        var folder = engine.Folder;
        var sessionOptions = new EngineOptions
        {
            ExecutionProvider = ExecutionProviderPreference.Cpu, IntraOpThreads = options.Threads,
        };
        var heavy = engine.Compiler.Compile(Workloads.Heavy(engine.SteeringShape)).Generated;
        var capacity = PromptTokens + MaxTokens;
        var steppers = new List<(string Name, IDecodeStepper Stepper)>();
        // As in the engine, the sessions share their packed weights: they differ only in their graphs.
        using var weights = SharedWeights.Open([folder.BatchedPlainGraphPath!, folder.BatchedGraphPath!]);
        try
        {
            steppers.Add(("no hooks, unsteered", new SharedBufferStepper(SessionFactory.Create(
                folder.BatchedPlainGraphPath!, sessionOptions, weights).Session, Architecture, capacity)));
            steppers.Add(("custom-operator hooks, heavy spec", new SharedBufferStepper(SessionFactory.Create(
                folder.BatchedGraphPath!, sessionOptions, weights).Session, Architecture, capacity, heavy)));
            // The control: the same graph without hooks in a second session over the same weights, made last.
            steppers.Add(("no hooks, unsteered, second session", new SharedBufferStepper(SessionFactory.Create(
                folder.BatchedPlainGraphPath!, sessionOptions, weights).Session, Architecture, capacity)));
            var (times, _, _) = FusedComparison.Measure(options.Rounds, options.WarmUps, MaxTokens - 1, steppers, prompt,
                log, firstAgreeing: 1);
            double Ratio(int a, int b) => FusedComparison.Median(times[a].Zip(times[b], (x, y) => x / y));
            var ms = times.Select(t => FusedComparison.Median(t) / 1000).ToArray();
            return $"\nThe steered step alone: the folder's batched graph without hooks, its hooked graph with the heavy "
                + "spec, and the graph without hooks again in a second session (the control), stepped in lockstep "
                + $"({options.Rounds} rounds × {MaxTokens - 1} steps after the same prompt, the order rotating each "
                + $"step): {ms[0]:F2}, {ms[1]:F2} and {ms[2]:F2} ms per step (medians). Unsteered ÷ steered step time, "
                + $"median of paired steps: {Ratio(0, 1):F3}; the control, unsteered ÷ the same graph in the second "
                + $"session: {Ratio(0, 2):F3}, which is how far apart two sessions of one graph run here. The three "
                + "sessions share one container of packed weights, as the engine's two graphs do.\n";
        }
        finally
        {
            foreach (var (_, stepper) in steppers) stepper.Dispose();
        }
    }

    /// <summary>
    /// Resident memory the folder's two batched graphs (with and without hooks) add to a fresh process when their
    /// sessions share a container of packed weights, as the engine opens them, and when each session packs its own.
    /// Each is measured in a process of its own (<c>graph-memory</c>): in this one, memory freed by earlier sessions
    /// stays with the allocator and would be counted again.
    /// </summary>
    private static string WeightMemory(ModelFolder folder, TextWriter log)
    {
        long Child(string packing)
        {
            var self = Environment.ProcessPath!;
            var start = new ProcessStartInfo(self) { RedirectStandardOutput = true };
            // Run as `dotnet FeatureFlow.Benchmarks.dll`, the process is the dotnet host: name the assembly again.
            if (Path.GetFileNameWithoutExtension(self) == "dotnet")
                start.ArgumentList.Add(typeof(SyntheticModelComparison).Assembly.Location);
            foreach (var arg in new[] { "graph-memory", "--model", folder.Directory, "--packing", packing })
                start.ArgumentList.Add(arg);
            using var child = Process.Start(start)!;
            var text = child.StandardOutput.ReadToEnd();
            child.WaitForExit();
            if (child.ExitCode != 0) throw new InvalidOperationException($"graph-memory --packing {packing} exited {child.ExitCode}");
            return long.Parse(text.Trim(), System.Globalization.CultureInfo.InvariantCulture);
        }
        var shared = Child("shared");
        var apart = Child("apart");
        log.WriteLine($"two graphs: {shared / 1e6:F0} MB sharing packed weights, {apart / 1e6:F0} MB apart");
        return $"\nMemory: opening the folder's two batched graphs (with and without hooks) in a fresh process adds "
            + $"{shared / 1e6:F0} MB to its resident set when their sessions share one container of packed weights, as "
            + $"the engine opens them, and {apart / 1e6:F0} MB when each session packs its own "
            + $"({WeightBytesPerToken(Architecture) / 1e6:F0} MB of float32 weights; `graph-memory`, this run).\n";
    }

    /// <summary>Prints the bytes that opening the folder's two batched graphs adds to this process's resident set.</summary>
    public static int GraphMemory(string modelDir, bool shared, TextWriter output)
    {
        var folder = ModelFolder.Open(modelDir);
        var options = new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu };
        // ONNX Runtime's environment and the custom operators' one-off registration are not the graphs' memory.
        using (var warm = new Microsoft.ML.OnnxRuntime.SessionOptions()) FeatureFlow.Onnx.CustomOps.FeatureFlowOps.Register(warm);
        var before = Resident();
        using var weights = shared ? SharedWeights.Open([folder.BatchedPlainGraphPath!, folder.BatchedGraphPath!]) : null;
        using var plain = SessionFactory.Create(folder.BatchedPlainGraphPath!, options, weights).Session;
        using var hooked = SessionFactory.Create(folder.BatchedGraphPath!, options, weights).Session;
        output.WriteLine(Resident() - before);
        return 0;
    }

    /// <summary>VmRSS as the kernel counts it now.</summary>
    private static long Resident() => 1024 * long.Parse(File.ReadLines("/proc/self/status")
        .First(l => l.StartsWith("VmRSS:", StringComparison.Ordinal))[6..].Trim().Split(' ')[0],
        System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>Float32 bytes of every weight a decode step reads (one embedding row aside: the tied classifier reads the
    /// whole table).</summary>
    public static long WeightBytesPerToken(ModelArchitecture a)
    {
        long d = a.DModel, kv = a.KvDim, h = a.HiddenDim;
        var perLayer = 2 * d + d * d + 2 * kv * d + d * d + 3 * h * d;
        return 4 * (a.Layers * perLayer + d + a.VocabSize * d);
    }

    private static string Report(Options options, List<IContender> contenders, List<RunResult>[] results,
        double bandwidth)
    {
        const int unsteered = 0, heavy = 1, genAi = 2, llamaCpp = 3;
        var bytes = WeightBytesPerToken(Architecture);
        var floorMs = 1000.0 * bytes / bandwidth;
        var sb = new StringBuilder();
        void Line(string s) => sb.AppendLine(s);
        Line(SectionHeading);
        Line("");
        Line($"Model: random weights (seed 1) in llama2.c layout, exported by `ModelFolderExporter` like the shipped " +
            $"model (and by `LlamaGguf` as an F32 GGUF for llama.cpp): d_model {Architecture.DModel}, " +
            $"{Architecture.Layers} layers, {Architecture.Heads} heads, hidden " +
            $"{Architecture.HiddenDim}, vocabulary {Architecture.VocabSize} — {bytes / 4 / 1e6:F1}M parameters, " +
            $"{bytes / 1e6:F0} MB of float32 weights read per decoded token. Greedy; a {PromptTokens}-token prompt " +
            $"(BOS + story tokens); up to {MaxTokens} tokens; {options.WarmUps} warm-up round(s), then every engine once " +
            $"per round, interleaved, the order rotating each round; {options.Threads} intra-op thread(s) for every "
            + "engine. Every engine is opened anew for each round (our engine, shared by its two rows) or run (GenAI, "
            + "llama.cpp) and warmed by one untimed generation of the same request: where a process's 400 MB of "
            + "weights land moves a step by up to 10 % on this machine and stays put while the engine lives, so one "
            + "engine per benchmark would decide the ratios by its placement.");
        Line("");
        Line($"    dotnet run -c Release --project tests/FeatureFlow.Benchmarks -- synthetic --rounds {options.Rounds} " +
            $"--threads {options.Threads} --write docs/benchmarks.md");
        Line("");
        Line($"Machine: {EngineComparison.MachineDescription()}; ONNX Runtime 1.31.0 CPU; .NET {Environment.Version}; " +
            $"{DateTime.UtcNow:yyyy-MM-dd}. Read bandwidth measured in this run: {bandwidth / 1e9:F1} GB/s " +
            $"({options.Threads} thread(s) summing a 1 GiB array, best of 5), so the floor is " +
            $"{bytes / 1e6:F0} MB ÷ {bandwidth / 1e9:F1} GB/s = {floorMs:F1} ms per token ({1000 / floorMs:F1} tokens/s).");
        Line("");
        Line($"| engine | decode tokens/s (median of {options.Rounds}) | min – max | ms per token | ÷ floor time " +
            $"| first token ms | model ms per step | allocated B per step | tokens |");
        Line("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (var i = 0; i < contenders.Count; i++)
        {
            var rs = results[i];
            var tps = rs.Select(r => r.DecodeTokensPerSecond).ToArray();
            var ms = 1000 / EngineComparison.Median(tps);
            var model = rs[0].ModelMsPerStep is null ? "–"
                : EngineComparison.Median(rs.Select(r => r.ModelMsPerStep!.Value)).ToString("F2");
            var alloc = rs[0].AllocatedBytesPerToken is null ? "–"
                : EngineComparison.Median(rs.Select(r => r.AllocatedBytesPerToken!.Value)).ToString("F1");
            Line($"| {contenders[i].Name} | {EngineComparison.Median(tps):F1} | {tps.Min():F1} – {tps.Max():F1} " +
                $"| {ms:F1} | {ms / floorMs:F2} | {EngineComparison.Median(rs.Select(r => 1000 * r.FirstTokenSeconds)):F0} " +
                $"| {model} | {alloc} | {rs[0].Tokens.Count} |");
        }
        Line("");
        Line("| target | measured | min – max | goal | |");
        Line("|---|---:|---:|---:|---|");
        void Ratio(string label, int a, int b, double? goal)
        {
            var ratios = results[a].Zip(results[b], (x, y) => x.DecodeTokensPerSecond / y.DecodeTokensPerSecond).ToArray();
            var m = EngineComparison.Median(ratios);
            var verdict = goal is { } g ? $"≥ {g:F2} | {(m >= g ? "met" : "missed")}" : "(no target) |";
            Line($"| {label} | {m:F3} | {ratios.Min():F2} – {ratios.Max():F2} | {verdict} |");
        }
        Ratio("ours unsteered ÷ ONNX Runtime GenAI", unsteered, genAi, 1.0);
        Ratio("ours unsteered ÷ llama.cpp", unsteered, llamaCpp, null);
        Ratio("ours heavy spec ÷ ours unsteered", heavy, unsteered, 0.97);
        var withinFloor = floorMs / (1000 / EngineComparison.Median(results[unsteered].Select(r => r.DecodeTokensPerSecond)));
        Line($"| floor time ÷ ours unsteered time per token (1 ÷ 1.5 = 0.67 is \"within 1.5× of the floor\") " +
            $"| {withinFloor:F2} | | ≥ 0.67 | {(withinFloor >= 1 / 1.5 ? "met" : "missed")} |");
        Line("");
        var reference = results[unsteered][0].Tokens;
        var differing = new[] { unsteered, genAi, llamaCpp }
            .Where(i => !results[i].All(r => r.Tokens.SequenceEqual(reference)))
            .Select(i => $"{contenders[i].Name} (first differs at token {FirstDifference(results[i], reference)})")
            .ToArray();
        Line(differing.Length == 0
            ? $"Greedy ids: ours unsteered, ONNX Runtime GenAI and llama.cpp gave the same {reference.Count} token ids " +
              "in every round."
            : $"Greedy ids DIFFER from ours unsteered's first round for: {string.Join("; ", differing)}.");
        return sb.ToString();
    }

    /// <summary>The first token index where any of <paramref name="runs"/> leaves <paramref name="reference"/>.</summary>
    private static int FirstDifference(List<RunResult> runs, IReadOnlyList<int> reference) =>
        runs.Where(r => !r.Tokens.SequenceEqual(reference)).Min(r =>
        {
            var common = Math.Min(r.Tokens.Count, reference.Count);
            return Enumerable.Range(0, common).FirstOrDefault(k => r.Tokens[k] != reference[k], common);
        });

    /// <summary>
    /// Writes the random checkpoint and exports it with this build's exporter, and as a GGUF for llama.cpp (every run:
    /// a folder kept from an older build would measure that build's graphs).
    /// </summary>
    private static void Prepare(string modelDir, string tokenizer, TextWriter log)
    {
        var checkpoint = Path.Combine(modelDir, "synthetic-100m.bin");
        log.WriteLine($"writing a random {Architecture.Layers}-layer checkpoint to {checkpoint}");
        WriteRandomCheckpoint(checkpoint, Architecture, seed: 1);
        ModelFolderExporter.ExportLlama2c(new Llama2cExportRequest
        {
            CheckpointPath = checkpoint, TokenizerPath = tokenizer, OutputDirectory = modelDir,
            ModelName = "synthetic-100m", CopySources = false, Description = "random weights for benchmarks",
        }, line => log.WriteLine(line));
        log.WriteLine($"writing the same weights as {GgufFileName} for llama.cpp");
        LlamaGguf.WriteLlama2c(checkpoint, tokenizer, Path.Combine(modelDir, GgufFileName));
        File.Delete(checkpoint);
        File.Copy(tokenizer, Path.Combine(modelDir, Path.GetFileName(tokenizer)));
    }

    /// <summary>A llama2.c v0 checkpoint: header, then uniform weights with std 0.02 and unit RMSNorm gains.</summary>
    private static void WriteRandomCheckpoint(string path, ModelArchitecture a, int seed)
    {
        var random = new Random(seed);
        using var stream = new BufferedStream(File.Create(path), 1 << 20);
        Span<int> header = [a.DModel, a.HiddenDim, a.Layers, a.Heads, a.KvHeads, a.VocabSize, a.ContextLength];
        stream.Write(MemoryMarshal.AsBytes(header));
        void Random(long count)
        {
            var buffer = new float[1 << 16];
            var bound = 0.02f * MathF.Sqrt(3f);
            for (long done = 0; done < count; done += buffer.Length)
            {
                var n = (int)Math.Min(buffer.Length, count - done);
                for (var i = 0; i < n; i++) buffer[i] = bound * (2 * (float)random.NextDouble() - 1);
                stream.Write(MemoryMarshal.AsBytes(buffer.AsSpan(0, n)));
            }
        }
        void Ones(long count)
        {
            for (long i = 0; i < count; i++) stream.Write(BitConverter.GetBytes(1f));
        }
        long d = a.DModel, h = a.HiddenDim, l = a.Layers, kv = a.KvDim;
        Random(a.VocabSize * d);
        Ones(l * d);
        Random(l * d * d);
        Random(l * kv * d);
        Random(l * kv * d);
        Random(l * d * d);
        Ones(l * d);
        Random(l * h * d);
        Random(l * d * h);
        Random(l * h * d);
        Ones(d);
        Random((long)a.ContextLength * a.HeadSize); // legacy freq_cis tables, skipped by readers
    }

    /// <summary>Bytes per second that <paramref name="threads"/> threads read summing a 1 GiB array (best of 5).</summary>
    private static double MeasureReadBandwidth(int threads)
    {
        var data = GC.AllocateUninitializedArray<float>(1 << 28);
        data.AsSpan().Fill(1f);
        var best = double.MaxValue;
        var chunk = data.Length / threads;
        for (var attempt = 0; attempt < 5; attempt++)
        {
            var clock = Stopwatch.StartNew();
            var sums = new float[threads];
            Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, t =>
            {
                var span = MemoryMarshal.Cast<float, Vector<float>>(data.AsSpan(t * chunk, chunk));
                var acc = Vector<float>.Zero;
                foreach (var v in span) acc += v;
                sums[t] = Vector.Sum(acc);
            });
            best = Math.Min(best, clock.Elapsed.TotalSeconds);
            if (sums.Sum() <= 0) throw new InvalidOperationException("bandwidth probe summed nothing");
        }
        return 4.0 * data.Length / best;
    }
}
