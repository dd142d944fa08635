using System.CommandLine;
using FeatureFlow.Models.Hooking;

namespace FeatureFlow.Cli;

public static class HookCommand
{
    public static Command Build(TextWriter output, TextWriter error)
    {
        var input = new Option<string>("--in") { Description = "third-party decoder graph (.onnx); its folder's other files are copied along", Required = true };
        var outDir = new Option<string>("--out") { Description = "model folder to create (must not exist, or be empty)", Required = true };
        var slots = new Option<int>("--slots") { Description = "rescale/clamp feature slots per hook site", DefaultValueFactory = _ => new HookOptions().SlotsPerSite };
        var noSiteOutputs = new Option<bool>("--no-site-outputs") { Description = "do not expose site values as graph outputs" };
        var name = new Option<string?>("--name") { Description = "model name in the manifest (default: the input's folder name)" };
        var command = new Command("hook", "Insert FeatureFlow steering hooks into a decoder graph another tool exported (torch.onnx/Optimum GPT-2, "
            + "ONNX Runtime's fused GPT-2, onnxruntime-genai model-builder Llama), finding every block's sites from the graph's structure.")
        {
            input, outDir, slots, noSiteOutputs, name,
        };
        command.SetAction((parse, _) => CliApp.Guard(error, async () =>
        {
            var manifest = HookedFolderWriter.Write(new HookRequest
            {
                InputGraph = parse.GetValue(input)!,
                OutputDirectory = parse.GetValue(outDir)!,
                Options = new HookOptions { SlotsPerSite = parse.GetValue(slots), SiteOutputs = !parse.GetValue(noSiteOutputs) },
                ModelName = parse.GetValue(name),
            }, line => output.WriteLine(line));
            var hooking = manifest.Hooking!;
            await output.WriteLineAsync($"sites ({hooking.Sites.Count}, {hooking.Family}):");
            foreach (var site in hooking.Sites) await output.WriteLineAsync($"  {site.Site} ← {site.Found}");
            await output.WriteLineAsync($"hooked {manifest.Name} into {Path.GetFullPath(parse.GetValue(outDir)!)}");
            return 0;
        }));
        return command;
    }
}
