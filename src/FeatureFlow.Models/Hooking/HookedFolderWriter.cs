using System.Security.Cryptography;
using FeatureFlow.Models.Export;
using FeatureFlow.Models.Folder;
using FeatureFlow.Onnx;
using DataType = FeatureFlow.Onnx.Ir.TensorProto.Types.DataType;

namespace FeatureFlow.Models.Hooking;

public sealed record HookRequest
{
    /// <summary>The third-party decoder graph (its folder's other files are copied along).</summary>
    public required string InputGraph { get; init; }
    /// <summary>The model folder to create; it must not exist yet, or be empty.</summary>
    public required string OutputDirectory { get; init; }
    public HookOptions Options { get; init; } = new();
    /// <summary>Model name in the manifest; the input's folder name when null.</summary>
    public string? ModelName { get; init; }
}

/// <summary>
/// <c>featureflow hook</c>: hooks a third-party decoder graph and writes a model folder around it that our engine
/// serves like its own — the hooked graph and the source graph without hooks, both given our interface by
/// <see cref="InterfaceAdapter"/> (<c>decoder_hooked.onnx</c>, <c>decoder.onnx</c>), the source graph itself unchanged
/// (its genai_config.json names it), every other file of the input's folder (tokenizer, configs, external weights,
/// which all three graphs read from the same file) and the manifest with a <c>hooking</c> section. Everything is
/// written into a temporary folder beside the output and moved into place at the end, so a refusal or failure leaves
/// no output folder behind.
/// </summary>
public static class HookedFolderWriter
{
    public const string HookedGraphFile = ModelFolderExporter.HookedGraphFile;
    public const string PlainGraphFile = ModelFolderExporter.PlainGraphFile;
    public const string TokenizerFile = "tokenizer.json";
    public const string HookerVersion = "featureflow hook 0.1";

    public static ModelManifest Write(HookRequest request, Action<string>? progress = null)
    {
        progress ??= _ => { };
        var input = Path.GetFullPath(request.InputGraph);
        if (!File.Exists(input)) throw new FileNotFoundException($"no graph at {input}", input);
        var sourceDir = Path.GetDirectoryName(input)!;
        var output = Path.GetFullPath(request.OutputDirectory.TrimEnd('/', '\\'));
        if (Directory.Exists(output) && Directory.EnumerateFileSystemEntries(output).Any())
            throw new IOException($"{output} already exists and is not empty; choose a new folder");
        var graphFile = Path.GetFileName(input);
        if (graphFile is HookedGraphFile or ModelManifest.FileName)
            throw new InvalidDataException($"the input graph must not be named {graphFile}: the hooked folder writes "
                + $"that file");

        var source = OnnxModelFile.Read(input);
        var external = ExternalData.Files(source);
        progress($"read {graphFile}: {source.Graph.Node.Count} nodes, {source.Graph.Initializer.Count} initializers, "
            + $"ai.onnx opset "
            + $"{OpsetRequirement.Of(source)}{(external.Count > 0 ? $", external data in {string.Join(", ", external)}" : "")}");
        foreach (var file in external)
            if (!File.Exists(Path.Combine(sourceDir, file)))
                throw new FileNotFoundException($"external data file {file} named by {graphFile} is missing from "
                    + $"{sourceDir}");

        var config = SourceModelConfig.Read(sourceDir);
        var hooked = GraphHooker.Hook(source, request.Options, config.Hints);
        var decoder = hooked.Decoder;
        var arch = decoder.Architecture;
        progress($"recognised {decoder.Family}: {arch.Layers} blocks, d_model {arch.DModel}, {arch.Heads} heads, "
            + $"vocab {arch.VocabSize}, "
            + $"{DecoderIoDetector.TypeName(decoder.FloatType)}, KV {hooked.Io.Kv.Packing}");
        config.CheckLayers(arch.Layers, graphFile);
        if (config.LayerCounts.Count > 0) progress($"block count agrees with "
            + $"{string.Join(" and ", config.LayerCounts.Select(c => c.Source))}");
        if (hooked.OpsetRaisedFrom is { } raised) progress($"raised ai.onnx opset {raised} → {OpsetRequirement.Minimum}");
        if (decoder.Rewrites.Count > 0)
            progress($"split {decoder.Rewrites.Count} fused nodes into plain operators, e.g. {decoder.Rewrites[0]} "
                + $"(all listed in the manifest)");
        progress($"inserted {decoder.Sites.Count} hooks ({request.Options.SlotsPerSite} slots per site"
            + $"{(request.Options.SiteOutputs ? ", site outputs" : "")})");
        var hookedAdapted = InterfaceAdapter.Adapt(hooked.Model, hooked.Io, arch);
        var plainAdapted = InterfaceAdapter.Adapt(source, hooked.Io, arch);
        progress(plainAdapted.Changes.Count == 0 ? "inputs and outputs are already featureflow's interface"
            : $"adapted inputs and outputs to featureflow's interface: {string.Join("; ", plainAdapted.Changes)}");
        if (!File.Exists(Path.Combine(sourceDir, TokenizerFile)))
            throw new FileNotFoundException($"expected {TokenizerFile} beside {graphFile} (a model folder needs its "
                + $"tokenizer); found none");
        var bos = config.BosId ?? throw new InvalidDataException($"no bos_token_id in "
            + $"{SourceModelConfig.HuggingFaceFile} or {SourceModelConfig.GenAiFile}");
        var eos = config.EosId ?? throw new InvalidDataException($"no eos_token_id in "
            + $"{SourceModelConfig.HuggingFaceFile} or {SourceModelConfig.GenAiFile}");

        var staging = Path.Combine(Path.GetDirectoryName(output)!, $".{Path.GetFileName(output)}.hooking-{Guid.NewGuid():N}");
        Directory.CreateDirectory(staging);
        try
        {
            OnnxModelFile.Write(hookedAdapted.Model, Path.Combine(staging, HookedGraphFile));
            OnnxModelFile.Write(plainAdapted.Model, Path.Combine(staging, PlainGraphFile));
            progress($"wrote {HookedGraphFile} and {PlainGraphFile}");
            var copies = Directory.GetFiles(sourceDir).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToArray();
            foreach (var file in copies)
            {
                if (file is HookedGraphFile or PlainGraphFile or ModelManifest.FileName)
                    throw new InvalidDataException($"{sourceDir} already holds a {file}, which the hooked folder "
                        + "writes itself; hook a folder that is not a featureflow model folder, or rename that file");
                File.Copy(Path.Combine(sourceDir, file!), Path.Combine(staging, file!));
            }
            progress($"copied {copies.Length} files of the source folder: {string.Join(", ", copies)}");
            var files = new SortedDictionary<string, string>(StringComparer.Ordinal);
            foreach (var path in Directory.GetFiles(staging)) files[Path.GetFileName(path)] = Sha256(path);
            var manifest = new ModelManifest
            {
                Name = request.ModelName ?? Path.GetFileName(sourceDir),
                Architecture = arch,
                Tokenizer = new TokenizerEntry("hf", TokenizerFile, bos, eos),
                Graphs = new GraphEntry(HookedGraphFile, PlainGraphFile),
                Steering = new SteeringLayout(request.Options.SlotsPerSite, decoder.Sites.Select(s => s.Site.HookName).ToArray(),
                    request.Options.SiteOutputs),
                Provenance = new Provenance($"{graphFile} ({decoder.Family}) with featureflow steering hooks inserted",
                    "not recorded: the source model's license applies", new SourceFile(graphFile, files[graphFile]), new SourceFile(TokenizerFile, files[TokenizerFile]),
                    HookerVersion),
                Files = files,
                Hooking = new HookingSection
                {
                    Family = decoder.Family,
                    SourceGraph = graphFile,
                    FloatType = DecoderIoDetector.TypeName(decoder.FloatType),
                    FloatCast = decoder.FloatType == DataType.Float ? null : GraphHooker.FloatCastNote,
                    OpsetRaisedFrom = hooked.OpsetRaisedFrom,
                    Rewrites = decoder.Rewrites,
                    Sites = decoder.Sites.Select(s => new HookedSite(s.Site.HookName, s.Value, s.Found)).ToArray(),
                    Io = hooked.Io,
                    InterfaceChanges = plainAdapted.Changes,
                },
            };
            File.WriteAllText(Path.Combine(staging, ModelManifest.FileName), manifest.ToJson());
            progress($"wrote {ModelManifest.FileName}");
            if (Directory.Exists(output)) Directory.Delete(output);
            Directory.Move(staging, output);
            return manifest;
        }
        catch
        {
            Directory.Delete(staging, true);
            throw;
        }
    }

    private static string Sha256(string path)
    {
        using var stream = File.OpenRead(path);
        return Convert.ToHexStringLower(SHA256.HashData(stream));
    }
}
