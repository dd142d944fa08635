using System.Globalization;
using System.Text;
using FeatureFlow.Engine;
using FeatureFlow.Models.Folder;
using FeatureFlow.Steering;
using FeatureFlow.Steering.Packs;

namespace FeatureFlow.Benchmarks;

/// <summary>
/// <c>engines</c>: single-stream greedy decoding, ours (unsteered, steered by a pack, steered by the heaviest spec)
/// next to ONNX Runtime GenAI and llama.cpp on the same weights, every engine once per round, interleaved.
/// </summary>
public static class EngineComparison
{
    public const string SectionHeading = "## Single-stream engines: ours vs ONNX Runtime GenAI vs llama.cpp (issue P8)";
    private const int PromptTokens = 128;
    private const int MaxTokens = 256;
    /// <summary>The concurrent streams of the batched rows (P3's and P8's 16).</summary>
    private const int Streams = 16;
    private static readonly CultureInfo Invariant = CultureInfo.InvariantCulture;

    public sealed record Options(int Rounds, int WarmUps, string Pack, string? WritePath);

    public static async Task<int> RunAsync(Options options, TextWriter output, TextWriter log)
    {
        var root = RepoRoot();
        var modelDir = Path.Combine(root, "models", "stories260k");
        var folder = ModelFolder.Open(modelDir);
        using var engine = new GenerationEngine(folder,
            new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu, IntraOpThreads = 1 });
        var pack = SteeringPack.Read(Path.Combine(modelDir, "packs", options.Pack + SteeringPack.Extension),
            folder.Manifest);
        var packSpec = new SteeringSpec(pack.At(pack.Metadata.DefaultStrength, SteeringScope.All, "pack").ToList());
        var heavy = Workloads.Heavy(engine.SteeringShape);
        var unsteeredEngine = new OursContender("ours, unsteered (hook-free batched graph)", engine, SteeringSpec.None);
        var prompt = await Workloads.PromptAsync(engine.EncodePrompt(Workloads.Story), PromptTokens, MaxTokens,
            async ids => (await unsteeredEngine.RunAsync(ids, MaxTokens)).Tokens.Count);

        var contenders = new List<IContender>
        {
            unsteeredEngine,
            new OursContender($"ours, pack {pack.Name} ({packSpec.Terms.Count} terms, " +
                $"{packSpec.Terms.Select(t => t.Site.Layer).Distinct().Count()} layers)", engine, packSpec),
            new OursContender($"ours, heavy spec ({engine.SteeringShape.Sites} sites × add + " +
                $"{engine.SteeringShape.SlotsPerSite} rescale/clamp slots)", engine, heavy),
            new GenAiContender(modelDir, engine.Tokenizer.BosId, engine.Tokenizer.EosId),
            new LlamaCppContender(Path.Combine(root, "tests", "fixtures", "stories260k", "stories260K.gguf")),
            new OursStreamsContender($"ours, {Streams} streams unsteered (aggregate)", engine, SteeringSpec.None, Streams),
            new OursStreamsContender($"ours, {Streams} streams heavy spec (aggregate)", engine, heavy, Streams),
        };
        var results = await RunInterleavedAsync(contenders, prompt, MaxTokens, options.Rounds, options.WarmUps, log);
        var report = Report(options, contenders, results, engine);
        await output.WriteAsync(report);
        if (options.WritePath is { } path)
        {
            WriteSection(path, report);
            await log.WriteLineAsync($"wrote the section to {path}");
        }
        return 0;
    }

    /// <summary>
    /// Warm-up rounds, then every contender once per round in turn (so drifts in the machine's speed hit all of them
    /// alike), the order rotating by one each round (so no contender always runs right after the same other one);
    /// the contenders are disposed at the end. Results per contender, in round order.
    /// </summary>
    /// <param name="beforeRound">Runs before each round, untimed (e.g. opening and warming fresh engines).</param>
    internal static async Task<List<RunResult>[]> RunInterleavedAsync(IReadOnlyList<IContender> contenders,
        int[] prompt, int maxTokens, int rounds, int warmUps, TextWriter log, Func<Task>? beforeRound = null)
    {
        try
        {
            var results = contenders.Select(_ => new List<RunResult>()).ToArray();
            for (var round = -warmUps; round < rounds; round++)
            {
                if (beforeRound is not null) await beforeRound();
                for (var k = 0; k < contenders.Count; k++)
                {
                    var i = ((k + round) % contenders.Count + contenders.Count) % contenders.Count;
                    var result = await contenders[i].RunAsync(prompt, maxTokens);
                    if (round >= 0) results[i].Add(result);
                }
                await log.WriteLineAsync(round < 0 ? "warm-up round done" : $"round {round + 1}/{rounds} done");
            }
            return results;
        }
        finally
        {
            foreach (var c in contenders) c.Dispose();
        }
    }

    private static string Report(Options options, List<IContender> contenders, List<RunResult>[] results,
        GenerationEngine engine)
    {
        const int unsteered = 0, heavy = 2, genAi = 3, llama = 4, batch = 5, batchHeavy = 6;
        var sb = new StringBuilder();
        void Line(string s) => sb.AppendLine(s);
        Line($"{SectionHeading}");
        Line($"");
        Line($"Command (greedy; a {PromptTokens}-token prompt of story text from our tokenizer, BOS first, fed " +
            $"verbatim to every engine, the first window of the story whose unsteered continuation does not end " +
            $"early; {MaxTokens} tokens; {options.WarmUps} warm-up round(s), then every engine once " +
            $"per round, interleaved, the order rotating each round):");
        Line($"");
        Line($"    dotnet run -c Release --project tests/FeatureFlow.Benchmarks -- engines --rounds {options.Rounds} " +
            $"--write docs/benchmarks.md");
        Line($"");
        Line($"Machine: {MachineDescription()}; ONNX Runtime 1.31.0 CPU execution provider " +
            $"(ours: {engine.Provider.Name}), 1 intra-op thread everywhere; .NET {Environment.Version}; " +
            $"{DateTime.UtcNow:yyyy-MM-dd}.");
        Line($"");
        Line($"| engine | decode tokens/s (median of {options.Rounds}) | min – max | ÷ ours unsteered " +
            $"| first token ms (median) | min – max | model ms per decode step | allocated B per token | tokens |");
        Line($"|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        var baseline = Median(results[unsteered].Select(r => r.DecodeTokensPerSecond));
        for (var i = 0; i < contenders.Count; i++)
        {
            var rs = results[i];
            var tps = rs.Select(r => r.DecodeTokensPerSecond).ToArray();
            var ttft = rs.Select(r => 1000 * r.FirstTokenSeconds).ToArray();
            var model = rs[0].ModelMsPerStep is null ? "–"
                : Median(rs.Select(r => r.ModelMsPerStep!.Value)).ToString("F3", Invariant);
            var alloc = rs[0].AllocatedBytesPerToken is null ? "–"
                : Median(rs.Select(r => r.AllocatedBytesPerToken!.Value)).ToString("F1", Invariant);
            Line($"| {contenders[i].Name} | {Median(tps):F0} | {tps.Min():F0} – {tps.Max():F0} " +
                $"| {Median(tps) / baseline:F2} | {Median(ttft):F2} | {ttft.Min():F2} – {ttft.Max():F2} | {model} " +
                $"| {alloc} | {rs[0].Tokens.Count} |");
        }
        Line($"");
        Line($"Targets (median over rounds of the per-round ratio of decode tokens/s; min – max across rounds):");
        Line($"");
        Line($"| target | measured | min – max | goal | |");
        Line($"|---|---:|---:|---:|---|");
        foreach (var (label, a, b, goal) in new[]
        {
            ("ours unsteered ÷ ONNX Runtime GenAI", unsteered, genAi, 1.0),
            ("ours unsteered ÷ llama.cpp", unsteered, llama, 1.0),
            ("ours heavy spec ÷ ours unsteered", heavy, unsteered, 0.90),
            ($"ours heavy spec ÷ ours unsteered, {Streams} streams", batchHeavy, batch, 0.90),
            ($"ours {Streams} streams ÷ 1 stream, unsteered (aggregate tokens/s)", batch, unsteered, 6.0),
        })
        {
            var ratios = results[a].Zip(results[b], (x, y) => x.DecodeTokensPerSecond / y.DecodeTokensPerSecond).ToArray();
            var m = Median(ratios);
            Line($"| {label} | {m:F2} | {ratios.Min():F2} – {ratios.Max():F2} | ≥ {goal:F2} " +
                $"| {(m >= goal ? "met" : "missed")} |");
        }
        Line($"");
        Line(PerToken(contenders, results, unsteered, genAi, llama, heavy));
        Line($"");
        Line($"{Agreement(contenders, results, [unsteered, genAi, llama])}");
        Line($"");
        Line($"Decode tokens/s counts the tokens after the first over the time after the first, so prefill is only in " +
            $"the first-token column. Ours is timed at the consumer of `GenerationEngine.GenerateAsync` (submission, " +
            $"prefill, the loop thread, the channel); GenAI from making its per-request `Generator`; llama.cpp from " +
            $"its first `llama_decode` on a context made beforehand (as our KV cache is made at start-up). Model ms " +
            $"and allocated bytes are our engine's figures per decode step (`EngineFigures`).");
        return sb.ToString();
    }

    /// <summary>Where a decoded token's time goes, to explain a missed target: our model ms per step and the rest.</summary>
    private static string PerToken(List<IContender> contenders, List<RunResult>[] results, int unsteered, int genAi,
        int llama, int heavy)
    {
        double Ms(int i) => 1000 / Median(results[i].Select(r => r.DecodeTokensPerSecond));
        double Model(int i) => Median(results[i].Select(r => r.ModelMsPerStep!.Value));
        return $"Per decoded token: ours unsteered {Ms(unsteered):F3} ms ({Model(unsteered):F3} ms in ONNX Runtime, " +
            $"{Ms(unsteered) - Model(unsteered):F3} ms loop, sampling and streaming); heavy spec {Ms(heavy):F3} ms " +
            $"({Model(heavy):F3} ms in ONNX Runtime: the hooked graph's steering ops at every site); " +
            $"{contenders[genAi].Name} {Ms(genAi):F3} ms; {contenders[llama].Name} {Ms(llama):F3} ms.";
    }

    /// <summary>Whether the greedy ids of the engines at <paramref name="which"/> agree in every round.</summary>
    private static string Agreement(List<IContender> contenders, List<RunResult>[] results, int[] which)
    {
        var reference = results[which[0]][0].Tokens;
        foreach (var i in which)
            foreach (var run in results[i])
            {
                if (run.Tokens.SequenceEqual(reference)) continue;
                var at = Enumerable.Range(0, Math.Min(run.Tokens.Count, reference.Count))
                    .FirstOrDefault(k => run.Tokens[k] != reference[k], Math.Min(run.Tokens.Count, reference.Count));
                return $"Greedy ids DISAGREE: {contenders[i].Name} departs from {contenders[which[0]].Name} at " +
                    $"generated token {at} ({run.Tokens.Count} vs {reference.Count} tokens).";
            }
        return $"Greedy ids: {string.Join(", ", which.Select(i => contenders[i].Name))} gave the same " +
            $"{reference.Count} token ids in every round.";
    }

    internal static double Median(IEnumerable<double> values)
    {
        var s = values.Order().ToArray();
        return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
    }

    internal static string MachineDescription()
    {
        static string? Field(string file, string key) => File.Exists(file)
            ? File.ReadLines(file).FirstOrDefault(l => l.StartsWith(key, StringComparison.Ordinal))?.Split(':', 2)[1].Trim()
            : null;
        var cpu = Field("/proc/cpuinfo", "model name") ?? "unknown CPU";
        var memory = Field("/proc/meminfo", "MemTotal") is { } kb
            ? $"{double.Parse(kb.Split(' ')[0], Invariant) / (1024 * 1024):F0} GiB"
            : "unknown memory";
        return $"{Environment.ProcessorCount} cores of {cpu}, {memory}";
    }

    /// <summary>Replaces this benchmark's section of the markdown file (up to the next ## heading), or appends it.</summary>
    internal static void WriteSection(string path, string section, string heading = SectionHeading)
    {
        var text = File.Exists(path) ? File.ReadAllText(path) : "";
        var start = text.IndexOf(heading, StringComparison.Ordinal);
        if (start < 0)
        {
            File.WriteAllText(path, text.TrimEnd('\n') + "\n\n" + section);
            return;
        }
        var next = text.IndexOf("\n## ", start + heading.Length, StringComparison.Ordinal);
        var rest = next < 0 ? "" : "\n" + text[(next + 1)..];
        File.WriteAllText(path, text[..start] + section + rest);
    }

    internal static string RepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "FeatureFlow.Inference.sln"))) return dir.FullName;
        throw new DirectoryNotFoundException("FeatureFlow.Inference.sln not found above " + AppContext.BaseDirectory);
    }
}
