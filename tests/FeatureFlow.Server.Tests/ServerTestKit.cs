using FeatureFlow.Api.V1;
using FeatureFlow.Models.Folder;
using Grpc.Core;

namespace FeatureFlow.Server.Tests;

/// <summary>What several server test classes need: a generation's token ids, and a private copy of the shipped model.</summary>
public static class ServerTestKit
{
    public static async Task<List<int>> TokensAsync(this Inference.InferenceClient client, GenerateRequest request)
    {
        using var call = client.Generate(request);
        var ids = new List<int>();
        await foreach (var r in call.ResponseStream.ReadAllAsync()) ids.AddRange(r.TokenIds);
        return ids;
    }

    /// <summary>
    /// Runs a node script (working directory: the repository) and returns the JSON object it printed; fails with its
    /// stderr when it exits non-zero, and kills it when it runs over <paramref name="timeout"/>.
    /// </summary>
    public static async Task<System.Text.Json.JsonElement> RunNodeScriptAsync(string script, IEnumerable<string> arguments,
        TimeSpan timeout, IReadOnlyDictionary<string, string>? environment = null)
    {
        var start = new System.Diagnostics.ProcessStartInfo("node", [script, .. arguments])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = RepoPaths.Root,
        };
        foreach (var (name, value) in environment ?? new Dictionary<string, string>()) start.Environment[name] = value;
        using var node = System.Diagnostics.Process.Start(start)!;
        var output = node.StandardOutput.ReadToEndAsync();
        var errors = node.StandardError.ReadToEndAsync();
        try
        {
            await node.WaitForExitAsync().WaitAsync(timeout);
        }
        catch (TimeoutException)
        {
            node.Kill(entireProcessTree: true);
            throw new TimeoutException($"{Path.GetFileName(script)} ran over {timeout.TotalSeconds:0} s: {await errors}");
        }
        Assert.True(node.ExitCode == 0, $"{Path.GetFileName(script)} exited {node.ExitCode}:\n{await errors}\n{await output}");
        return System.Text.Json.JsonDocument.Parse(await output).RootElement;
    }

    /// <summary>The shipped model's manifest, graphs and tokenizer (no packs or SAEs) in <paramref name="folder"/>.</summary>
    public static ModelManifest CopyShippedModel(string folder)
    {
        var source = ModelFolder.Open(RepoPaths.Stories260kModel);
        var graphs = source.Manifest.Graphs;
        string[] files =
        [
            ModelManifest.FileName, graphs.Hooked, graphs.Plain, graphs.Batched!, graphs.BatchedPlain!,
            source.Manifest.Tokenizer.File,
        ];
        foreach (var file in files)
            File.Copy(Path.Combine(source.Directory, file), Path.Combine(folder, file));
        return source.Manifest;
    }
}
