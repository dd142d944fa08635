using System.Globalization;
using FeatureFlow.Benchmarks;

// The table and the markdown must read the same on every machine (decimal points, not commas).
CultureInfo.DefaultThreadCurrentCulture = CultureInfo.CurrentCulture = CultureInfo.InvariantCulture;
const string usage = "usage: engines [--rounds N] [--warm-ups N] [--pack NAME] [--write FILE]\n"
    + "       synthetic [--rounds N] [--warm-ups N] [--threads N] [--write FILE]\n"
    + "       fused [--rounds N] [--warm-ups N] [--prompt TOKENS] [--steps N]\n"
    + "       hooks [--rounds N] [--warm-ups N] [--prompt TOKENS] [--steps N] [--write FILE]\n"
    + "       graph-memory --model DIR --packing shared|apart   (synthetic runs it in a fresh process)";
if (args.Length == 0 || args[0] is not ("engines" or "synthetic" or "fused" or "hooks" or "graph-memory"))
{
    Console.Error.WriteLine(usage);
    return 2;
}
var flags = new Dictionary<string, string>();
for (var i = 1; i < args.Length; i += 2)
{
    var value = i + 1 < args.Length ? args[i + 1] : throw new ArgumentException($"{args[i]} needs a value; {usage}");
    flags[args[i]] = value;
}
string Flag(string name, string fallback) => flags.Remove(name, out var v) ? v : fallback;
int Int(string name, int fallback) =>
    int.Parse(Flag(name, fallback.ToString(CultureInfo.InvariantCulture)), CultureInfo.InvariantCulture);
var write = Flag("--write", "") is { Length: > 0 } w ? Path.GetFullPath(w) : null;
Func<Task<int>> run = args[0] switch
{
    "engines" => RunEngines(new EngineComparison.Options(Int("--rounds", 7), Int("--warm-ups", 1),
        Flag("--pack", "sun-flow"), write)),
    "synthetic" => RunSynthetic(new SyntheticModelComparison.Options(Int("--rounds", 5), Int("--warm-ups", 1),
        Int("--threads", 1), write)),
    "hooks" => RunHooks(new HookComparison.Options(Int("--rounds", 20), Int("--warm-ups", 2), Int("--prompt", 128),
        Int("--steps", 256), write)),
    "graph-memory" => RunGraphMemory(Flag("--model", ""), Flag("--packing", "")),
    _ when write is not null => throw new ArgumentException($"fused prints its table and writes no file; {usage}"),
    _ => RunFused(new FusedComparison.Options(Int("--rounds", 20), Int("--warm-ups", 2), Int("--prompt", 128),
        Int("--steps", 256))),
};
// Every flag was read above: one left over is a typo or belongs to another benchmark.
if (flags.Count > 0) throw new ArgumentException($"unknown option(s) {string.Join(", ", flags.Keys)} for {args[0]}; {usage}");
return await run();

static Func<Task<int>> RunEngines(EngineComparison.Options o) => () => EngineComparison.RunAsync(o, Console.Out, Console.Error);
static Func<Task<int>> RunSynthetic(SyntheticModelComparison.Options o) =>
    () => SyntheticModelComparison.RunAsync(o, Console.Out, Console.Error);
static Func<Task<int>> RunFused(FusedComparison.Options o) => () => Task.FromResult(FusedComparison.Run(o, Console.Out, Console.Error));
static Func<Task<int>> RunHooks(HookComparison.Options o) =>
    () => Task.FromResult(HookComparison.Run(o, Console.Out, Console.Error));
static Func<Task<int>> RunGraphMemory(string model, string packing) => () => Task.FromResult(
    SyntheticModelComparison.GraphMemory(model, packing switch
    {
        "shared" => true,
        "apart" => false,
        _ => throw new ArgumentException($"--packing must be shared or apart, got '{packing}'"),
    }, Console.Out));
