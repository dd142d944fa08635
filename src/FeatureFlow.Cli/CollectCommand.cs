using System.CommandLine;
using FeatureFlow.Engine;
using FeatureFlow.Models.Folder;

namespace FeatureFlow.Cli;

public static class CollectCommand
{
    public static Command Build(TextWriter output, TextWriter error)
    {
        var model = ServeCommand.ModelOption();
        var outDir = new Option<string>("--out") { Description = "corpus folder to write", DefaultValueFactory = _ => "artifacts/corpus" };
        var sequences = new Option<int>("--sequences") { Description = "stories the model writes itself (each from BOS, seed + index)", DefaultValueFactory = _ => 1000 };
        var length = new Option<int>("--length") { Description = "tokens per story", DefaultValueFactory = _ => 512 };
        var batch = new Option<int>("--batch") { Description = "stories generated together (one chunk per batch)", DefaultValueFactory = _ => 50 };
        var seed = new Option<ulong>("--seed") { Description = "base seed", DefaultValueFactory = _ => 1UL };
        var text = new Option<string[]>("--text") { Description = "text file to add to the corpus (repeatable)" };
        var float16 = new Option<bool>("--float16") { Description = "store activations as float16 (half the disk)" };
        var provider = ServeCommand.ProviderOption();
        var command = new Command("collect", "Run the model over a corpus (its own stories with fixed seeds, plus text files) and write every site's activations as chunked safetensors.")
        {
            model, outDir, sequences, length, batch, seed, text, float16, provider,
        };
        command.SetAction((parse, _) => CliApp.Guard(error, () =>
        {
            var folder = ModelFolder.Open(parse.GetValue(model)!);
            using var decoder = new HookedDecoder(folder.HookedGraphPath, folder.Manifest.Architecture, new EngineOptions { ExecutionProvider = parse.GetValue(provider) });
            var options = new CollectOptions
            {
                GeneratedSequences = parse.GetValue(sequences),
                SequenceLength = parse.GetValue(length),
                BatchRows = parse.GetValue(batch),
                Seed = parse.GetValue(seed),
                TextFiles = parse.GetValue(text) ?? [],
                Float16 = parse.GetValue(float16),
            };
            var bar = new ProgressBar(error, "collect", "tokens");
            var manifest = ActivationCollector.Collect(decoder, folder.LoadTokenizer(), folder.Manifest.Name, options, parse.GetValue(outDir)!, bar.Report);
            output.WriteLine($"wrote {manifest.TotalTokens:N0} tokens × {manifest.Sites.Count} sites to {Path.GetFullPath(parse.GetValue(outDir)!)} ({decoder.Provider.Name})");
            return Task.FromResult(0);
        }));
        return command;
    }
}
