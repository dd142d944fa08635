using System.Globalization;
using FeatureFlow.Benchmarks;

// The table and the markdown must read the same on every machine (decimal points, not commas).
CultureInfo.DefaultThreadCurrentCulture = CultureInfo.CurrentCulture = CultureInfo.InvariantCulture;
const string usage = "usage: engines [--rounds N] [--warm-ups N] [--pack NAME] [--write FILE]\n"
    + "       synthetic [--rounds N] [--warm-ups N] [--threads N] [--write FILE]";
if (args.Length == 0 || args[0] is not ("engines" or "synthetic"))
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
int Int(string name, int fallback) => int.Parse(Flag(name, fallback.ToString(CultureInfo.InvariantCulture)), CultureInfo.InvariantCulture);
var write = Flag("--write", "") is { Length: > 0 } w ? Path.GetFullPath(w) : null;
var engines = args[0] == "engines"
    ? new EngineComparison.Options(Int("--rounds", 7), Int("--warm-ups", 1), Flag("--pack", "sun-flow"), write)
    : null;
var synthetic = args[0] == "synthetic"
    ? new SyntheticModelComparison.Options(Int("--rounds", 5), Int("--warm-ups", 1), Int("--threads", 1), write)
    : null;
if (flags.Count > 0) throw new ArgumentException($"unknown option(s) {string.Join(", ", flags.Keys)} for {args[0]}; {usage}");
return engines is not null
    ? await EngineComparison.RunAsync(engines, Console.Out, Console.Error)
    : await SyntheticModelComparison.RunAsync(synthetic!, Console.Out, Console.Error);
