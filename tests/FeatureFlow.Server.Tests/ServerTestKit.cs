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
