using System.Globalization;
using FeatureFlow.Benchmarks;

// The table and the markdown must read the same on every machine (decimal points, not commas).
CultureInfo.DefaultThreadCurrentCulture = CultureInfo.CurrentCulture = CultureInfo.InvariantCulture;
const string usage = "usage: engines [--rounds N] [--warm-ups N] [--pack NAME] [--write FILE]\n"
    + "       fused [--rounds N] [--warm-ups N] [--prompt TOKENS] [--steps N]";
if (args.Length == 0 || args[0] is not ("engines" or "fused"))
{
    Console.Error.WriteLine(usage);
    return 2;
}
IEnumerable<(string Flag, string Value)> Flags()
{
    for (var i = 1; i < args.Length; i += 2)
        yield return (args[i],
            i + 1 < args.Length ? args[i + 1] : throw new ArgumentException($"{args[i]} needs a value; {usage}"));
}
int Int(string value) => int.Parse(value, CultureInfo.InvariantCulture);
ArgumentException Unknown(string flag) => new($"unknown option '{flag}' for {args[0]}; {usage}");

if (args[0] == "fused")
{
    var fused = new FusedComparison.Options(Rounds: 20, WarmUps: 2, PromptTokens: 128, Steps: 256);
    foreach (var (flag, value) in Flags())
    {
        fused = flag switch
        {
            "--rounds" => fused with { Rounds = Int(value) },
            "--warm-ups" => fused with { WarmUps = Int(value) },
            "--prompt" => fused with { PromptTokens = Int(value) },
            "--steps" => fused with { Steps = Int(value) },
            _ => throw Unknown(flag),
        };
    }
    return FusedComparison.Run(fused, Console.Out, Console.Error);
}
var options = new EngineComparison.Options(Rounds: 7, WarmUps: 1, Pack: "sun-flow", WritePath: null);
foreach (var (flag, value) in Flags())
{
    options = flag switch
    {
        "--rounds" => options with { Rounds = Int(value) },
        "--warm-ups" => options with { WarmUps = Int(value) },
        "--pack" => options with { Pack = value },
        "--write" => options with { WritePath = Path.GetFullPath(value) },
        _ => throw Unknown(flag),
    };
}
return await EngineComparison.RunAsync(options, Console.Out, Console.Error);
