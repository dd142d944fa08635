using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using FeatureFlow.Evaluation;
using FeatureFlow.Models.Folder;
using FeatureFlow.Sae;

namespace FeatureFlow.Cli;

/// <summary>
/// <c>featureflow eval results</c>: every measurement behind <c>docs/steering-results.md</c> from a checked-in spec
/// (match validation, hook fidelity, chain lengths, a sweep per theme), in-process and resumable; the document and
/// its figures; with <c>--ship</c>, the spec's multi-layer packs at the strength the ship rule picks, and the pack
/// folder's README.
/// </summary>
public static class EvalResultsCommand
{
    public static Command Build(TextWriter output, TextWriter error)
    {
        var spec = new Option<string>("--spec")
        {
            Description = "the results spec (JSON)", DefaultValueFactory = _ => "docs/steering-results/spec.json",
        };
        var work = new Option<string>("--work")
        {
            Description = "work folder (every row and report; a rerun resumes from it)",
            DefaultValueFactory = _ => "artifacts/eval/results",
        };
        var doc = new Option<string>("--doc")
        {
            Description = "the document to write", DefaultValueFactory = _ => "docs/steering-results.md",
        };
        var figures = new Option<string>("--figures")
        {
            Description = "folder for the document's figures, summary CSVs and packs.json",
            DefaultValueFactory = _ => "docs/steering-results",
        };
        var ship = new Option<bool>("--ship")
        {
            Description = "write the spec's packs that pass the ship rule to the pack folder and regenerate its README",
        };
        var packs = new Option<string?>("--packs") { Description = "pack folder (default: the model folder's packs/)" };
        var rows = new Option<int>("--max-batch-rows")
        {
            Description = "engine rows per decode step of the sweeps", DefaultValueFactory = _ => 64,
        };
        var model = ServeCommand.ModelOption();
        var saes = SaeCommand.SaesOption();
        var map = FlowCommand.MapOption();
        var command = new Command("results",
            "Reproduce docs/steering-results.md from the model folder and a spec: match validation, hook fidelity, " +
            "chain lengths and a strength sweep per theme, verdicts on the paper's findings, figures; with --ship, " +
            "the spec's multi-layer packs at the strength the ship rule picks.")
        {
            spec, work, doc, figures, ship, packs, rows, model, saes, map,
        };
        command.SetAction((parse, ct) => CliApp.Guard(error, async () =>
        {
            var clock = Stopwatch.StartNew();
            var specPath = parse.GetValue(spec)!;
            var plan = ResultsSpec.Load(specPath);
            var folder = ModelFolder.Open(parse.GetValue(model)!);
            var set = SaeSet.Load(SaeCommand.SaeDirectory(folder, parse.GetValue(saes)), folder.Manifest.Architecture);
            var mapPath = FlowCommand.MapPath(folder, parse.GetValue(map));
            var flowMap = FlowCommand.LoadMap(folder, parse.GetValue(map), error);
            var inputs = new ResultsInputs(folder, set, flowMap, mapPath);
            var run = await ResultsRunner.RunAsync(inputs, plan, parse.GetValue(work)!, parse.GetValue(rows), error,
                (label, unit) => new ProgressBar(error, label, unit).Report, ct);

            var decisions = ResultsPacks.Decide(run, set, folder);
            foreach (var d in decisions)
                output.WriteLine(d.Refusal is { } why
                    ? $"pack {d.Spec.Name}: refused: {why}"
                    : string.Create(CultureInfo.InvariantCulture, $"pack {d.Spec.Name}: default strength " +
                        $"{d.Choice.Chosen!.Cell.Strength:G4} ({d.Choice.Family}, combined " +
                        $"{d.Choice.Chosen.Combined}, perplexity {d.Choice.Chosen.Perplexity}), " +
                        $"terms on {d.Blocks} blocks"));

            var packsDir = parse.GetValue(packs) ?? Path.Combine(folder.Directory, "packs");
            var figuresDir = parse.GetValue(figures)!;
            var shipping = parse.GetValue(ship);
            if (shipping)
            {
                var shipped = new List<ShippedPack>();
                foreach (var d in decisions.Where(d => d.Pack is not null))
                {
                    output.WriteLine($"shipped {string.Join(", ", ResultsPacks.Write(d, packsDir))}");
                    shipped.Add(d.Shipped(ResultsDocument.PackFigure(d), plan.Rule.MaxPerplexityRatio));
                }
                Directory.CreateDirectory(figuresDir);
                ShippedPack.Save(figuresDir, shipped);
                File.WriteAllText(Path.Combine(packsDir, "README.md"),
                    SteerCommand.Readme(folder, packsDir, figuresDir, new Flow.PackEvaluationOptions(), error));
                output.WriteLine($"wrote {Path.Combine(packsDir, "README.md")}");
            }

            var commandLine = "featureflow " +
                string.Join(' ', parse.Tokens.Select(t => t.Value.Contains(' ') ? $"\"{t.Value}\"" : t.Value));
            var wall = clock.Elapsed;
            var context = new ResultsContext(commandLine, specPath, parse.GetValue(doc)!, figuresDir, folder.Directory,
                packsDir, DateTimeOffset.UtcNow, ResultsDocument.Machine(), wall, shipping);
            var files = ResultsDocument.Write(run, decisions, context);
            output.WriteLine($"wrote {files.Count} files: {context.DocPath} and its figures in {figuresDir}");
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"wall time {wall.TotalSeconds:F1} s ({wall.TotalMinutes:F1} min)"));
            var refused = decisions.Where(d => d.Refusal is not null).ToArray();
            foreach (var d in refused.Where(_ => shipping))
                error.WriteLine($"featureflow: refusing to ship {d.Spec.Name}: {d.Refusal}");
            return shipping && refused.Length > 0 ? 1 : 0;
        }));
        return command;
    }
}
