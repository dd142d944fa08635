using System.Globalization;
using FeatureFlow.Benchmarks;

// The table and the markdown must read the same on every machine (decimal points, not commas).
CultureInfo.DefaultThreadCurrentCulture = CultureInfo.CurrentCulture = CultureInfo.InvariantCulture;
const string usage = "usage: engines [--rounds N] [--warm-ups N] [--pack NAME] [--write FILE]";
if (args.Length == 0 || args[0] != "engines")
{
    Console.Error.WriteLine(usage);
    return 2;
}
var options = new EngineComparison.Options(Rounds: 7, WarmUps: 1, Pack: "sun-flow", WritePath: null);
for (var i = 1; i < args.Length; i += 2)
{
    var flag = args[i];
    var value = i + 1 < args.Length ? args[i + 1] : throw new ArgumentException($"{flag} needs a value; {usage}");
    options = flag switch
    {
        "--rounds" => options with { Rounds = int.Parse(value, CultureInfo.InvariantCulture) },
        "--warm-ups" => options with { WarmUps = int.Parse(value, CultureInfo.InvariantCulture) },
        "--pack" => options with { Pack = value },
        "--write" => options with { WritePath = Path.GetFullPath(value) },
        _ => throw new ArgumentException($"unknown option '{flag}'; {usage}"),
    };
}
return await EngineComparison.RunAsync(options, Console.Out, Console.Error);
