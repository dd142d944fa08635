using System.Security.Cryptography;
using FeatureFlow.Models.Export;
using FeatureFlow.Models.HuggingFace;
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
    /// <summary>As for Hugging Face exports: Auto keeps the shipped stories260K inline and moves a 100M model's
    /// weights to one <see cref="ModelFolderExporter.WeightsFile"/> that the four graphs share.</summary>
    public ExternalWeights ExternalWeights { get; init; } = ExternalWeights.Auto;
}

/// <summary>Whether a Hugging Face export keeps its weights in one external-data file beside the graphs.</summary>
public enum ExternalWeights
{
    /// <summary>External once the float32 weights reach <see cref="HuggingFaceExportRequest.AutoExternalBytes"/>.
    /// </summary>
    Auto,
    Always,
    Never,
}

public sealed record HuggingFaceExportRequest
{
    /// <summary>
    /// Below this many float32 weight bytes the graphs keep their weights inline (four copies on disk, one file
    /// each); from it on they share one external-data file, which also lifts protobuf's 2 GiB limit per graph.
    /// </summary>
    public const long AutoExternalBytes = 64L << 20;

    public required string CheckpointDirectory { get; init; }
    /// <summary>A new or empty folder; the export is built beside it and moved there when complete.</summary>
    public required string OutputDirectory { get; init; }
    /// <summary>The manifest's model name; null: the checkpoint folder's name.</summary>
    public string? ModelName { get; init; }
    public HookedGraphOptions Hooks { get; init; } = new();
    public ExternalWeights ExternalWeights { get; init; } = ExternalWeights.Auto;
    public string License { get; init; } = "";
    /// <summary>
    /// Float16 writes every graph in fused operators with float16 weights and math inside, float32 at the boundary
    /// (<see cref="Float16Converter"/>), and no batched graphs: the folder is served row by row. Each graph is built
    /// inline in memory first, then converted, then (with external weights) moved out to the shared file.
    /// </summary>
    public GraphPrecision Precision { get; init; } = GraphPrecision.Float32;
}

/// <summary>The float type of an exported folder's weights and math.</summary>
public enum GraphPrecision { Float32, Float16 }

/// <summary>
/// <c>featureflow export</c> for llama2.c checkpoints and (<see cref="ExportHuggingFace"/>) Hugging Face ones: writes the hooked graph, the plain graph, the
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
    /// <summary>
    /// ONNX Runtime's CPU GroupQueryAttention refuses other head sizes ("head_size must be a multiple of 8"), so a
    /// model with such heads gets no batched graphs: the reference runner serves it, the batching engine cannot.
    /// </summary>
    public const int BatchedHeadSizeMultiple = 8;
    /// <summary>The external-data file all graphs of an export share (when it has one).</summary>
    public const string WeightsFile = "weights.data";
    public const string ExporterVersion = "featureflow export 0.1";

    public static ModelManifest ExportLlama2c(Llama2cExportRequest request, Action<string>? progress = null)
    {
        progress ??= _ => { };
        var checkpoint = Llama2cCheckpoint.Read(request.CheckpointPath);
        var arch = checkpoint.Architecture;
        progress($"read {Path.GetFileName(request.CheckpointPath)}: d_model {arch.DModel}, {arch.Layers} layers, {arch.Heads} heads ({arch.KvHeads} kv), vocab {arch.VocabSize}");
        var tokenizer = Llama2cTokenizer.Load(request.TokenizerPath, arch.VocabSize);
        Directory.CreateDirectory(request.OutputDirectory);

        var folder = new FolderFiles(request.OutputDirectory, progress);
        // A re-export writes the weights file anew (or, inline now, leaves none behind).
        File.Delete(Path.Combine(request.OutputDirectory, WeightsFile));
        var hooked = folder.WriteGraphs(
            UseExternalWeights(request.ExternalWeights, new FileInfo(request.CheckpointPath).Length),
            weights => WriteGraphs(folder, request.Hooks, batched: true, OperatorSet.Plain, OperatorSet.Fused,
                options => LlamaGraphExporter.Export(arch, checkpoint.Weights, options, request.ModelName, weights)));

        var tokenizerFile = Path.GetFileName(request.TokenizerPath);
        var checkpointFile = Path.GetFileName(request.CheckpointPath);
        var tokenizerBytes = File.ReadAllBytes(request.TokenizerPath);
        if (request.CopySources)
        {
            folder.Write(tokenizerFile, tokenizerBytes);
            folder.Write(checkpointFile, File.ReadAllBytes(request.CheckpointPath));
        }
        folder.Write(GenAiConfig.FileName, System.Text.Encoding.UTF8.GetBytes(GenAiConfig.Write(arch, PlainGraphFile, tokenizer.BosId, tokenizer.EosId)));

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
            Files = folder.Hashes,
        };
        File.WriteAllText(Path.Combine(request.OutputDirectory, ModelManifest.FileName), manifest.ToJson());
        progress($"wrote {ModelManifest.FileName}");
        return manifest;
    }

    /// <summary>
    /// <c>featureflow export --hf</c>: the same four graphs, genai_config.json and manifest from a Hugging Face
    /// checkpoint (<see cref="HfArchitectures"/> names the model classes), with its tokenizer files copied (format
    /// "hf"). Everything is written to a folder beside the output and moved there at the end, so a failure leaves
    /// nothing behind; the checkpoint is not copied (its hash is in the manifest).
    /// </summary>
    public static ModelManifest ExportHuggingFace(HuggingFaceExportRequest request, Action<string>? progress = null)
    {
        progress ??= _ => { };
        var output = Path.GetFullPath(request.OutputDirectory);
        RequireNewFolder(output);
        var config = HfConfig.Read(request.CheckpointDirectory);
        var architecture = HfArchitectures.For(config);
        using var checkpoint = HfCheckpoint.Open(request.CheckpointDirectory);
        var tokenizerFiles = HfTokenizerFiles.Find(checkpoint.Directory);
        var name = request.ModelName ?? Path.GetFileName(checkpoint.Directory);
        progress($"reading {config.Architecture} from {checkpoint.Source} ({checkpoint.ShardFiles.Count} file(s), "
            + $"{checkpoint.Float32Bytes:N0} bytes as float32)");
        var model = architecture.Load(config, checkpoint, progress);
        var arch = model.Architecture;
        progress($"{arch.Family}: d_model {arch.DModel}, {arch.Layers} layers, {arch.Heads} heads ({arch.KvHeads} kv), "
            + $"vocab {arch.VocabSize}, context {arch.ContextLength}");
        var half = request.Precision == GraphPrecision.Float16;
        if (half && model.BatchedOperators != OperatorSet.Fused)
            throw new InvalidDataException($"{config.Path}: float16 output needs fused-operator graphs (norms that sum "
                + $"in float32, precomputed rotary tables), which the {config.Architecture} exporter does not write; "
                + "export it as float32");
        var batched = !half && arch.HeadSize % BatchedHeadSizeMultiple == 0;
        if (half)
            progress("float16: every graph in fused operators, float16 inside and float32 at the boundary; no batched "
                + "graphs (the engine serves the folder row by row)");
        else if (!batched)
            progress($"no batched graphs: head size {arch.HeadSize} is not a multiple of {BatchedHeadSizeMultiple}, "
                + "which ONNX Runtime's GroupQueryAttention needs (the batching engine cannot serve this model)");
        var external = UseExternalWeights(request.ExternalWeights, checkpoint.Float32Bytes);

        var staging = Path.Combine(Path.GetDirectoryName(output)!, $".{Path.GetFileName(output)}.partial-{Guid.NewGuid():N}");
        Directory.CreateDirectory(staging);
        try
        {
            var folder = new FolderFiles(staging, progress);
            var hooked = folder.WriteGraphs(external, weights => half
                ? WriteGraphs(folder, request.Hooks, batched: false, OperatorSet.Fused, OperatorSet.Fused,
                    options => Float16Graph(model.ExportGraph(options, name, null), weights))
                : WriteGraphs(folder, request.Hooks, batched, OperatorSet.Plain, model.BatchedOperators,
                    options => model.ExportGraph(options, name, weights)));
            foreach (var file in tokenizerFiles) folder.Write(file, File.ReadAllBytes(Path.Combine(checkpoint.Directory, file)));
            folder.Write(GenAiConfig.FileName, System.Text.Encoding.UTF8.GetBytes(
                GenAiConfig.Write(arch, PlainGraphFile, model.BosId, model.EosId, model.GenAiType)));
            progress($"hashing {checkpoint.Source} for the manifest");
            var manifest = new ModelManifest
            {
                Name = name,
                Architecture = arch,
                Tokenizer = new TokenizerEntry("hf", HfTokenizerFiles.Main, model.BosId, model.EosId),
                Graphs = batched
                    ? new GraphEntry(HookedGraphFile, PlainGraphFile, BatchedGraphFile, BatchedPlainGraphFile)
                    : new GraphEntry(HookedGraphFile, PlainGraphFile),
                Steering = new SteeringLayout(hooked.SlotsPerSite, Site.All(arch.Layers).Select(s => s.HookName).ToArray(),
                    hooked.SiteOutputs),
                Provenance = new Provenance($"Hugging Face {config.Architecture} checkpoint '{name}' (not copied)",
                    request.License, new SourceFile(checkpoint.Source, checkpoint.Sha256()),
                    new SourceFile(HfTokenizerFiles.Main, folder.Hashes[HfTokenizerFiles.Main]), ExporterVersion),
                Files = folder.Hashes,
            };
            File.WriteAllText(Path.Combine(staging, ModelManifest.FileName), manifest.ToJson());
            if (Directory.Exists(output)) Directory.Delete(output);
            Directory.Move(staging, output);
            progress($"wrote {ModelManifest.FileName} and moved the folder to {output}");
            return manifest;
        }
        catch
        {
            Directory.Delete(staging, recursive: true);
            throw;
        }
    }

    /// <summary>
    /// The hooked Concat graph, the plain one, and (if <paramref name="batched"/>) both again with the shared KV
    /// buffer, in that order. Returns the hooked graph's options (decoder_hooked.onnx is the Concat graph whatever
    /// the request says: GenAI and the engine read it).
    /// </summary>
    /// <param name="concatOperators">The Concat graphs' operators: plain (the reference, and what GenAI runs), fused
    /// for float16 folders.</param>
    /// <param name="batchedOperators">The batched graphs' operators: <see cref="OperatorSet.Fused"/> where the exporter
    /// has them (the engine's steps run 0.6× as long on stories260K, docs/benchmarks.md). Whatever they are, the hooks
    /// of decoder_hooked_batched.onnx are the ai.featureflow custom operators (a node per hook instead of eleven
    /// operators, and in the fused graph one node for a block's mlp_out/resid_post pair, each with the norm after it;
    /// only the engine runs that graph); the Concat graphs keep ONNX-operator hooks, the reference and what GenAI runs.
    /// </param>
    private static HookedGraphOptions WriteGraphs(FolderFiles folder, HookedGraphOptions requested, bool batched,
        OperatorSet concatOperators, OperatorSet batchedOperators, Func<HookedGraphOptions, Onnx.Ir.ModelProto> export)
    {
        var hooked = requested with
        {
            Hooks = true, KvLayout = KvCacheLayout.Concat, Operators = concatOperators,
            HookOperators = HookOperators.Onnx,
        };
        var plain = hooked with { Hooks = false, SiteOutputs = false };
        var shared = hooked with
        {
            KvLayout = KvCacheLayout.SharedBuffer,
            Operators = batchedOperators,
            HookOperators = HookOperators.CustomOperator,
        };
        var sharedPlain = shared with { Hooks = false, SiteOutputs = false, HookOperators = HookOperators.Onnx };
        foreach (var (file, options) in new[]
                 {
                     (HookedGraphFile, hooked), (PlainGraphFile, plain), (BatchedGraphFile, shared),
                     (BatchedPlainGraphFile, sharedPlain),
                 }.Take(batched ? 4 : 2))
            folder.Write(file, OnnxModelFile.Serialize(export(options)));
        return hooked;
    }

    /// <summary>The graph in float16 (built inline, converted, then its weights moved to the shared file if any).
    /// </summary>
    private static Onnx.Ir.ModelProto Float16Graph(Onnx.Ir.ModelProto graph, ExternalDataFile? weights)
    {
        var half = Float16Converter.Convert(graph);
        if (weights is not null) ExternalData.Externalize(half, weights);
        return half;
    }

    private static void RequireNewFolder(string output)
    {
        if (File.Exists(output))
            throw new IOException($"--out {output} is a file; expected a new or empty folder");
        if (Directory.Exists(output) && Directory.EnumerateFileSystemEntries(output).Any())
            throw new IOException($"--out {output} already holds files; expected a new or empty folder (nothing was "
                + "written)");
        if (Path.GetDirectoryName(output) is not { } parent || !Directory.Exists(parent))
            throw new DirectoryNotFoundException($"--out {output}: its parent folder does not exist");
    }

    /// <summary>Writes files into a folder and keeps each one's SHA-256 for the manifest.</summary>
    private static bool UseExternalWeights(ExternalWeights choice, long float32Bytes) =>
        choice == ExternalWeights.Always
        || (choice == ExternalWeights.Auto && float32Bytes >= HuggingFaceExportRequest.AutoExternalBytes);

    private sealed class FolderFiles(string directory, Action<string> progress)
    {
        public SortedDictionary<string, string> Hashes { get; } = new(StringComparer.Ordinal);

        /// <summary>
        /// Runs <paramref name="write"/> (which writes the graphs) with the folder's shared weights file when
        /// <paramref name="external"/>, else with null (weights inline), and hashes the file once it is complete.
        /// </summary>
        public HookedGraphOptions WriteGraphs(bool external, Func<ExternalDataFile?, HookedGraphOptions> write)
        {
            using var weights = external ? new ExternalDataFile(Path.Combine(directory, WeightsFile)) : null;
            var hooked = write(weights);
            if (weights is not null)
            {
                Hashes[WeightsFile] = weights.Complete();
                progress($"wrote {WeightsFile} ({weights.Length:N0} bytes, shared by every graph)");
            }
            return hooked;
        }

        public void Write(string name, byte[] bytes)
        {
            File.WriteAllBytes(Path.Combine(directory, name), bytes);
            Hashes[name] = Convert.ToHexStringLower(SHA256.HashData(bytes));
            progress($"wrote {name} ({bytes.Length:N0} bytes)");
        }
    }
}
