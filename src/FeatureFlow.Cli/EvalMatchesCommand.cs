using System.CommandLine;
using System.Globalization;
using FeatureFlow.Engine;
using FeatureFlow.Evaluation;
using FeatureFlow.Flow;
using FeatureFlow.Models.Folder;
using FeatureFlow.Sae;

namespace FeatureFlow.Cli;

/// <summary><c>featureflow eval matches</c>: the paper's match validation by single-token deactivation.</summary>
public static class EvalMatchesCommand
{
    public static Command Build(TextWriter output, TextWriter error)
    {
        var defaults = new MatchValidationOptions();
        var model = ServeCommand.ModelOption();
        var saes = SaeCommand.SaesOption();
        var map = FlowCommand.MapOption();
        var provider = ServeCommand.ProviderOption();
        var sequences = new Option<int>("--sequences")
        {
            Description = "stories the model writes itself from BOS (story i with seed + i)",
            DefaultValueFactory = _ => defaults.Sequences,
        };
        var tokens = new Option<int>("--tokens")
        {
            Description = "tokens per story, BOS included", DefaultValueFactory = _ => defaults.Tokens,
        };
        var samples = new Option<int>("--samples-per-layer")
        {
            Description = "tokens drawn from the stories; each gives one random active target per layer",
            DefaultValueFactory = _ => defaults.SamplesPerLayer,
        };
        var seed = new Option<ulong>("--seed")
        {
            Description = "seed of the stories, the sampled tokens, the targets and the random predecessors",
            DefaultValueFactory = _ => defaults.Seed,
        };
        var deactivation = new Option<Deactivation>("--deactivation")
        {
            Description = "Remove (RESCALE r = 0: h - a(h)·v, the paper's) or Zero (r = 1 - 1/(e·v): the "
                          + "feature's own hook activation becomes exactly 0)",
            DefaultValueFactory = _ => defaults.Deactivation,
        };
        var epsilon = new Option<float>("--epsilon")
        {
            Description = "activation at or below which a feature counts as inactive (0 suits JumpReLU hooks)",
            DefaultValueFactory = _ => defaults.Epsilon,
        };
        var parallelism = new Option<int>("--parallelism")
        {
            Description = "tokens evaluated at once (default: one per core)",
            DefaultValueFactory = _ => defaults.Parallelism,
        };
        var outDir = new Option<string>("--out")
        {
            Description = $"folder for {MatchValidationReport.TableFile}, {MatchValidationReport.SamplesFile} and "
                          + MatchValidationReport.MarkdownFile,
            DefaultValueFactory = _ => "artifacts/eval/matches",
        };
        var command = new Command("matches",
            "Match validation (Laptev et al. 2025): deactivate a residual feature's top-1 cosine predecessor in "
            + "R(L-1), M(L), A(L) or all three on one token, against a random and the best active feature there, and "
            + "report how often the feature turns off.")
        {
            model, saes, map, provider, sequences, tokens, samples, seed, deactivation, epsilon, parallelism, outDir,
        };
        command.SetAction((parse, _) => CliApp.Guard(error, () =>
        {
            var folder = ModelFolder.Open(parse.GetValue(model)!);
            var architecture = folder.Manifest.Architecture;
            var set = SaeSet.Load(SaeCommand.SaeDirectory(folder, parse.GetValue(saes)), architecture);
            var mapPath = FlowCommand.MapPath(folder, parse.GetValue(map));
            if (!File.Exists(mapPath))
                throw new FileNotFoundException($"no flow map at {mapPath} (run `featureflow flow build`)", mapPath);
            using var decoder = new HookedDecoder(folder.HookedGraphPath, architecture,
                new EngineOptions { ExecutionProvider = parse.GetValue(provider) });
            var options = new MatchValidationOptions
            {
                Sequences = parse.GetValue(sequences),
                Tokens = parse.GetValue(tokens),
                SamplesPerLayer = parse.GetValue(samples),
                Seed = parse.GetValue(seed),
                Deactivation = parse.GetValue(deactivation),
                Epsilon = parse.GetValue(epsilon),
                Parallelism = parse.GetValue(parallelism),
            };
            var bar = new ProgressBar(error, "eval matches", "tokens");
            var report = MatchValidator.Run(decoder, set, FlowMap.Load(mapPath), folder.LoadTokenizer().BosId, options,
                (done, total) => bar.Report(done, total));
            var dir = parse.GetValue(outDir)!;
            report.Write(dir);
            output.Write(report.ToMarkdownTable());
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"wall time {report.WallTime.TotalSeconds:F1} s (stories {report.StoriesTime.TotalSeconds:F1} s, "
                + $"interventions {report.EvaluationTime.TotalSeconds:F1} s, {report.Rows:N0} rows, "
                + $"{report.Provider})"));
            output.WriteLine($"wrote {MatchValidationReport.TableFile}, {MatchValidationReport.SamplesFile}, "
                             + $"{MatchValidationReport.MarkdownFile} to {Path.GetFullPath(dir)}");
            return Task.FromResult(0);
        }));
        return command;
    }
}
