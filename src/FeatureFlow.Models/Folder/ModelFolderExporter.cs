using System.Security.Cryptography;
using FeatureFlow.Models.Export;
using FeatureFlow.Models.Llama2c;
using FeatureFlow.Models.Tokenization;
using FeatureFlow.Onnx;

namespace FeatureFlow.Models.Folder;

public sealed record Llama2cExportRequest
{
    public required string CheckpointPath { get; init; }
    public required string TokenizerPath { get; init; }
    public required string OutputDirectory { get; init; }
    public required string ModelName { get; init; }
    public HookedGraphOptions Hooks { get; init; } = new();
    /// <summary>Copy the source checkpoint and tokenizer into the folder (the reference forward pass and re-export read them).</summary>
    public bool CopySources { get; init; } = true;
    public string Description { get; init; } = "";
    public string License { get; init; } = "";
}

/// <summary>
/// <c>featureflow export</c> for llama2.c checkpoints: writes the hooked graph, the plain graph, the
/// hooked graph with a shared KV buffer (continuous batching) and the same without hooks (batched steps that
/// steer and read out nothing), the tokenizer, <c>genai_config.json</c> and the manifest. Output is a pure
/// function of the inputs, so re-running it on the same sources reproduces committed folders byte for byte.
/// </summary>
public static class ModelFolderExporter
{
    public const string HookedGraphFile = "decoder_hooked.onnx";
    public const string PlainGraphFile = "decoder.onnx";
    public const string BatchedGraphFile = "decoder_hooked_batched.onnx";
    public const string BatchedPlainGraphFile = "decoder_batched.onnx";
    public const string ExporterVersion = "featureflow export 0.1";

    public static ModelManifest ExportLlama2c(Llama2cExportRequest request, Action<string>? progress = null)
    {
        progress ??= _ => { };
        var checkpoint = Llama2cCheckpoint.Read(request.CheckpointPath);
        var arch = checkpoint.Architecture;
        progress($"read {Path.GetFileName(request.CheckpointPath)}: d_model {arch.DModel}, {arch.Layers} layers, {arch.Heads} heads ({arch.KvHeads} kv), vocab {arch.VocabSize}");
        var tokenizer = Llama2cTokenizer.Load(request.TokenizerPath, arch.VocabSize);
        Directory.CreateDirectory(request.OutputDirectory);

        var files = new SortedDictionary<string, string>(StringComparer.Ordinal);
        void Write(string name, byte[] bytes)
        {
            File.WriteAllBytes(Path.Combine(request.OutputDirectory, name), bytes);
            files[name] = Convert.ToHexStringLower(SHA256.HashData(bytes));
            progress($"wrote {name} ({bytes.Length:N0} bytes)");
        }

        // decoder_hooked.onnx stays the Concat graph whatever the request says: GenAI and the engine read it.
        var hooked = request.Hooks with { Hooks = true, KvLayout = KvCacheLayout.Concat };
        Write(HookedGraphFile, OnnxModelFile.Serialize(LlamaGraphExporter.Export(arch, checkpoint.Weights, hooked, request.ModelName)));
        Write(PlainGraphFile, OnnxModelFile.Serialize(LlamaGraphExporter.Export(arch, checkpoint.Weights, hooked with { Hooks = false, SiteOutputs = false }, request.ModelName)));
        var batched = hooked with { KvLayout = KvCacheLayout.SharedBuffer };
        Write(BatchedGraphFile,
            OnnxModelFile.Serialize(LlamaGraphExporter.Export(arch, checkpoint.Weights, batched, request.ModelName)));
        var batchedPlain = batched with { Hooks = false, SiteOutputs = false };
        Write(BatchedPlainGraphFile, OnnxModelFile.Serialize(
            LlamaGraphExporter.Export(arch, checkpoint.Weights, batchedPlain, request.ModelName)));

        var tokenizerFile = Path.GetFileName(request.TokenizerPath);
        var checkpointFile = Path.GetFileName(request.CheckpointPath);
        var tokenizerBytes = File.ReadAllBytes(request.TokenizerPath);
        if (request.CopySources)
        {
            Write(tokenizerFile, tokenizerBytes);
            Write(checkpointFile, File.ReadAllBytes(request.CheckpointPath));
        }
        Write(GenAiConfig.FileName, System.Text.Encoding.UTF8.GetBytes(GenAiConfig.Write(arch, PlainGraphFile, tokenizer.BosId, tokenizer.EosId)));

        var manifest = new ModelManifest
        {
            Name = request.ModelName,
            Architecture = arch,
            Tokenizer = new TokenizerEntry("llama2c", tokenizerFile, tokenizer.BosId, tokenizer.EosId),
            Graphs = new GraphEntry(HookedGraphFile, PlainGraphFile, BatchedGraphFile, BatchedPlainGraphFile),
            Steering = new SteeringLayout(hooked.SlotsPerSite, Site.All(arch.Layers).Select(s => s.HookName).ToArray(), hooked.SiteOutputs),
            Provenance = new Provenance(request.Description, request.License,
                new SourceFile(checkpointFile, checkpoint.Sha256),
                new SourceFile(tokenizerFile, Convert.ToHexStringLower(SHA256.HashData(tokenizerBytes))),
                ExporterVersion),
            Files = files,
        };
        File.WriteAllText(Path.Combine(request.OutputDirectory, ModelManifest.FileName), manifest.ToJson());
        progress($"wrote {ModelManifest.FileName}");
        return manifest;
    }
}
