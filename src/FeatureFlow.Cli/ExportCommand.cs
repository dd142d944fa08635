using System.CommandLine;
using FeatureFlow.Models.Export;
using FeatureFlow.Models.Folder;

namespace FeatureFlow.Cli;

public static class ExportCommand
{
    public static Command Build(TextWriter output, TextWriter error)
    {
        var checkpoint = new Option<string>("--checkpoint") { Description = "llama2.c checkpoint (.bin)", Required = true };
        var tokenizer = new Option<string>("--tokenizer") { Description = "llama2.c tokenizer (tok*.bin)", Required = true };
        var outDir = new Option<string>("--out") { Description = "model folder to write", DefaultValueFactory = _ => "models/stories260k" };
        var name = new Option<string>("--name") { Description = "model name in the manifest", DefaultValueFactory = _ => "stories260k" };
        var slots = new Option<int>("--slots") { Description = "rescale/clamp feature slots per hook site", DefaultValueFactory = _ => new HookedGraphOptions().SlotsPerSite };
        var noSiteOutputs = new Option<bool>("--no-site-outputs") { Description = "do not expose site values as graph outputs" };
        var command = new Command("export", "Export a llama2.c checkpoint into a model folder: hooked and plain ONNX graphs with KV cache, tokenizer, genai_config.json and manifest.")
        {
            checkpoint, tokenizer, outDir, name, slots, noSiteOutputs,
        };
        command.SetAction((parse, _) => CliApp.Guard(error, async () =>
        {
            var manifest = ModelFolderExporter.ExportLlama2c(new Llama2cExportRequest
            {
                CheckpointPath = parse.GetValue(checkpoint)!,
                TokenizerPath = parse.GetValue(tokenizer)!,
                OutputDirectory = parse.GetValue(outDir)!,
                ModelName = parse.GetValue(name)!,
                Hooks = new HookedGraphOptions { SlotsPerSite = parse.GetValue(slots), SiteOutputs = !parse.GetValue(noSiteOutputs) },
                Description = "llama2.c stories260K (Andrej Karpathy, trained on TinyStories)",
                License = "MIT",
            }, line => output.WriteLine(line));
            await output.WriteLineAsync($"exported {manifest.Name} to {Path.GetFullPath(parse.GetValue(outDir)!)}");
            return 0;
        }));
        return command;
    }
}
