using System.CommandLine;
using FeatureFlow.Models.Export;
using FeatureFlow.Models.Folder;
using FeatureFlow.Models.HuggingFace;

namespace FeatureFlow.Cli;

public static class ExportCommand
{
    public static Command Build(TextWriter output, TextWriter error)
    {
        var checkpoint = new Option<string>("--checkpoint") { Description = "llama2.c checkpoint (.bin)" };
        var tokenizer = new Option<string>("--tokenizer") { Description = "llama2.c tokenizer (tok*.bin)" };
        var hf = new Option<string>("--hf")
        {
            Description = "Hugging Face checkpoint folder (config.json, model.safetensors or a sharded index, "
                + $"tokenizer.json): {string.Join(", ", HfArchitectures.Names)}",
        };
        var outDir = new Option<string>("--out")
        {
            Description = "model folder to write (with --hf: a new or empty folder, written beside it and moved there)",
            DefaultValueFactory = _ => "models/stories260k",
        };
        var name = new Option<string>("--name")
        {
            Description = "model name in the manifest (--hf: default the checkpoint folder's name)",
            DefaultValueFactory = _ => "stories260k",
        };
        var slots = new Option<int>("--slots") { Description = "rescale/clamp feature slots per hook site", DefaultValueFactory = _ => new HookedGraphOptions().SlotsPerSite };
        var noSiteOutputs = new Option<bool>("--no-site-outputs") { Description = "do not expose site values as graph outputs" };
        var externalData = new Option<ExternalWeights>("--external-data")
        {
            Description = "keep the weights in one weights.data file all graphs share (Auto: from "
                + $"{HuggingFaceExportRequest.AutoExternalBytes >> 20} MiB of float32 weights on)",
            DefaultValueFactory = _ => ExternalWeights.Auto,
        };
        var license = new Option<string>("--license") { Description = "with --hf: the checkpoint's license" };
        var dtype = new Option<GraphPrecision>("--dtype")
        {
            Description = "with --hf: Float32, or Float16 (fused-operator graphs with float16 weights and math, float32 "
                + "at the boundary; Llama only; served row by row)",
            DefaultValueFactory = _ => GraphPrecision.Float32,
        };
        var command = new Command("export", "Export a llama2.c checkpoint (--checkpoint, --tokenizer) or a Hugging Face "
            + "one (--hf) into a model folder: hooked and plain ONNX graphs with KV cache, tokenizer, genai_config.json "
            + "and manifest.")
        {
            checkpoint, tokenizer, hf, outDir, name, slots, noSiteOutputs, externalData, license, dtype,
        };
        command.Validators.Add(result =>
        {
            var isHf = result.GetValue(hf) is not null;
            if (isHf == (result.GetValue(checkpoint) is not null))
                result.AddError("give either --checkpoint with --tokenizer (llama2.c) or --hf (Hugging Face)");
            else if (isHf && result.GetValue(tokenizer) is not null)
                result.AddError("--tokenizer is for llama2.c checkpoints; --hf reads the folder's tokenizer.json");
            else if (!isHf && result.GetValue(tokenizer) is null)
                result.AddError("--checkpoint needs --tokenizer");
            else if (isHf && result.GetResult(outDir) is null or { Implicit: true })
                result.AddError("--hf needs --out (a new or empty folder)");
            else if (!isHf && result.GetValue(dtype) != GraphPrecision.Float32)
                result.AddError("--dtype is for --hf checkpoints; llama2.c exports are float32");
        });
        command.SetAction((parse, _) => CliApp.Guard(error, async () =>
        {
            var hooks = new HookedGraphOptions
            {
                SlotsPerSite = parse.GetValue(slots), SiteOutputs = !parse.GetValue(noSiteOutputs),
            };
            void Progress(string line) => output.WriteLine(line);
            var manifest = parse.GetValue(hf) is { } hfDirectory
                ? ModelFolderExporter.ExportHuggingFace(new HuggingFaceExportRequest
                {
                    CheckpointDirectory = hfDirectory,
                    OutputDirectory = parse.GetValue(outDir)!,
                    ModelName = parse.GetResult(name) is { Implicit: false } ? parse.GetValue(name) : null,
                    Hooks = hooks,
                    ExternalWeights = parse.GetValue(externalData),
                    License = parse.GetValue(license) ?? "",
                    Precision = parse.GetValue(dtype),
                }, Progress)
                : ModelFolderExporter.ExportLlama2c(new Llama2cExportRequest
                {
                    CheckpointPath = parse.GetValue(checkpoint)!,
                    TokenizerPath = parse.GetValue(tokenizer)!,
                    OutputDirectory = parse.GetValue(outDir)!,
                    ModelName = parse.GetValue(name)!,
                    Hooks = hooks,
                    Description = "llama2.c stories260K (Andrej Karpathy, trained on TinyStories)",
                    License = "MIT",
                    ExternalWeights = parse.GetValue(externalData),
                }, Progress);
            await output.WriteLineAsync($"exported {manifest.Name} to {Path.GetFullPath(parse.GetValue(outDir)!)}");
            return 0;
        }));
        return command;
    }
}
