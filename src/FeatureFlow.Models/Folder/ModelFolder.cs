using FeatureFlow.Models.Tokenization;

namespace FeatureFlow.Models.Folder;

/// <summary>A model folder on disk: its manifest and the paths of the files it names.</summary>
public sealed class ModelFolder
{
    private ModelFolder(string directory, ModelManifest manifest)
    {
        Directory = directory;
        Manifest = manifest;
    }

    public string Directory { get; }
    public ModelManifest Manifest { get; }
    public string HookedGraphPath => Path.Combine(Directory, Manifest.Graphs.Hooked);
    public string PlainGraphPath => Path.Combine(Directory, Manifest.Graphs.Plain);
    /// <summary>The shared-KV-buffer hooked graph; null when the folder has none.</summary>
    public string? BatchedGraphPath => Manifest.Graphs.Batched is { } file ? Path.Combine(Directory, file) : null;
    /// <summary>The shared-KV-buffer graph without hooks; null when the folder has none.</summary>
    public string? BatchedPlainGraphPath =>
        Manifest.Graphs.BatchedPlain is { } file ? Path.Combine(Directory, file) : null;
    public string TokenizerPath => Path.Combine(Directory, Manifest.Tokenizer.File);
    /// <summary>The external-data file every graph of the folder reads its weights from; null when they keep them
    /// inline.</summary>
    public string? WeightsPath => Manifest.Files.ContainsKey(ModelFolderExporter.WeightsFile)
        ? Path.Combine(Directory, ModelFolderExporter.WeightsFile) : null;

    public static ModelFolder Open(string directory)
    {
        var full = Path.GetFullPath(directory);
        var manifestPath = Path.Combine(full, ModelManifest.FileName);
        if (!File.Exists(manifestPath))
            throw new FileNotFoundException($"no model folder at {full}: {ModelManifest.FileName} is missing (run `featureflow export` to create one)", manifestPath);
        var manifest = ModelManifest.Parse(File.ReadAllText(manifestPath), manifestPath);
        var folder = new ModelFolder(full, manifest);
        string?[] needed =
            [folder.HookedGraphPath, folder.TokenizerPath, folder.BatchedGraphPath, folder.BatchedPlainGraphPath];
        foreach (var path in needed.OfType<string>())
            if (!File.Exists(path)) throw new FileNotFoundException($"model folder {full}: {Path.GetFileName(path)} named in the manifest is missing", path);
        return folder;
    }

    public ITokenizer LoadTokenizer() => Manifest.Tokenizer.Format switch
    {
        "llama2c" => Llama2cTokenizer.Load(TokenizerPath, Manifest.Architecture.VocabSize),
        "hf" => HfTokenizer.Load(TokenizerPath, Manifest.Tokenizer.BosId, Manifest.Tokenizer.EosId),
        var f => throw new InvalidDataException($"{Directory}: unknown tokenizer format '{f}' (expected llama2c or hf)"),
    };

    public IReadOnlyList<Site> Sites => Manifest.Steering.Sites.Select(Site.Parse).ToArray();
}
