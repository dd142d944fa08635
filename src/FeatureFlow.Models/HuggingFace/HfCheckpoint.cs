using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using FeatureFlow.Models.Formats;

namespace FeatureFlow.Models.HuggingFace;

/// <summary>
/// A Hugging Face checkpoint's weights: one model.safetensors, or the shards a model.safetensors.index.json maps
/// tensor names to. Every shard's header is read (and every mapped name checked) on opening, so a missing shard or
/// tensor fails before anything is written; tensors are then read one at a time as float32.
/// </summary>
public sealed class HfCheckpoint : IDisposable
{
    public const string SingleFile = "model.safetensors";
    public const string IndexFile = "model.safetensors.index.json";

    /// <summary>The stored precisions read (exactly) as float32; others are refused by name.</summary>
    public static readonly IReadOnlyList<SafeTensorsDType> ReadableDTypes =
        [SafeTensorsDType.F32, SafeTensorsDType.F16, SafeTensorsDType.BF16];

    private readonly Dictionary<string, SafeTensorsFile> _shardOf;
    private readonly SafeTensorsFile[] _shards;
    private readonly HashSet<string> _read = new(StringComparer.Ordinal);

    private HfCheckpoint(string directory, string source, SafeTensorsFile[] shards,
        Dictionary<string, SafeTensorsFile> shardOf)
    {
        Directory = directory;
        Source = source;
        _shards = shards;
        _shardOf = shardOf;
    }

    public string Directory { get; }
    /// <summary>The file that names the weights: <see cref="SingleFile"/> or <see cref="IndexFile"/>.</summary>
    public string Source { get; }
    public IReadOnlyList<string> ShardFiles => _shards.Select(s => Path.GetFileName(s.Path)).ToArray();
    public IReadOnlyCollection<string> TensorNames => _shardOf.Keys;
    /// <summary>Bytes the weights take as float32 (what the exported graphs hold).</summary>
    public long Float32Bytes => _shardOf.Sum(e => e.Value.Tensors[e.Key].ElementCount * sizeof(float));

    public static HfCheckpoint Open(string directory)
    {
        var full = Path.GetFullPath(directory);
        var index = Path.Combine(full, IndexFile);
        if (File.Exists(index)) return OpenSharded(full, index);
        var single = Path.Combine(full, SingleFile);
        if (!File.Exists(single))
        {
            var present = System.IO.Directory.Exists(full)
                ? string.Join(", ", System.IO.Directory.GetFiles(full).Select(Path.GetFileName)
                    .Order(StringComparer.Ordinal))
                : "no such directory";
            throw new FileNotFoundException($"{full}: expected {SingleFile} or {IndexFile} (safetensors weights), "
                + $"found: {present}", single);
        }
        var shard = SafeTensorsFile.Open(single);
        return new HfCheckpoint(full, SingleFile, [shard],
            shard.Tensors.Keys.ToDictionary(n => n, _ => shard, StringComparer.Ordinal));
    }

    public bool Contains(string name) => _shardOf.ContainsKey(name);

    /// <summary>A tensor's shape as stored (for readers that check shapes themselves).</summary>
    public long[] Shape(string name) => Shard(name).Tensors[name].Shape;

    /// <summary>A tensor as float32, checked against the shape the architecture implies.</summary>
    public float[] Read(string name, params long[] shape)
    {
        var shard = Shard(name);
        var tensor = shard.Tensors[name];
        if (!tensor.Shape.SequenceEqual(shape))
            throw new InvalidDataException($"{shard.Path}: tensor '{name}' has shape "
                + $"[{string.Join(", ", tensor.Shape)}]; expected [{string.Join(", ", shape)}] from {HfConfig.FileName}");
        if (!ReadableDTypes.Contains(tensor.DType))
            throw new InvalidDataException($"{shard.Path}: tensor '{name}' is {tensor.DType}; expected one of "
                + $"{string.Join(", ", ReadableDTypes)} (read as float32)");
        _read.Add(name);
        return shard.GetFloat32(name);
    }

    private SafeTensorsFile Shard(string name) => _shardOf.TryGetValue(name, out var shard) ? shard
        : throw new InvalidDataException($"{Path.Combine(Directory, Source)}: no tensor '{name}' ({_shardOf.Count} "
            + $"tensors, e.g. {string.Join(", ", _shardOf.Keys.Order(StringComparer.Ordinal).Take(3))})");

    /// <summary>
    /// Refuses a checkpoint with tensors the architecture's reader never asked for (biases the config does not
    /// announce, say), which would otherwise be dropped silently; <paramref name="unused"/> names the ones that are
    /// known to carry nothing (cached rotary tables, causal-mask buffers, a tied lm_head's copy).
    /// </summary>
    public void RequireAllRead(string architecture, Func<string, bool> unused)
    {
        var left = _shardOf.Keys.Where(n => !_read.Contains(n) && !unused(n)).Order(StringComparer.Ordinal).ToArray();
        if (left.Length > 0)
            throw new InvalidDataException($"{Path.Combine(Directory, Source)}: {left.Length} tensor(s) that a "
                + $"{architecture} as config.json describes it does not have: {string.Join(", ", left.Take(5))}"
                + (left.Length > 5 ? ", ..." : "") + " (expected none: they would be dropped)");
    }

    /// <summary>
    /// SHA-256 of the weights: of <see cref="SingleFile"/>, or of the shards' bytes one after another in file-name
    /// order (the index file itself only names them).
    /// </summary>
    public string Sha256()
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[1 << 20];
        foreach (var shard in _shards.OrderBy(s => Path.GetFileName(s.Path), StringComparer.Ordinal))
        {
            using var stream = new FileStream(shard.Path, FileMode.Open, FileAccess.Read, FileShare.Read, 1,
                FileOptions.SequentialScan);
            int read;
            while ((read = stream.Read(buffer)) > 0) hash.AppendData(buffer, 0, read);
        }
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }

    private static HfCheckpoint OpenSharded(string directory, string index)
    {
        JsonObject weightMap;
        try
        {
            weightMap = JsonNode.Parse(File.ReadAllText(index))?["weight_map"] as JsonObject
                ?? throw new InvalidDataException($"{index}: expected an object 'weight_map' (tensor name → shard "
                    + "file)");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{index}: malformed JSON ({e.Message})", e);
        }
        var shards = new Dictionary<string, SafeTensorsFile>(StringComparer.Ordinal);
        var shardOf = new Dictionary<string, SafeTensorsFile>(StringComparer.Ordinal);
        try
        {
            foreach (var (name, node) in weightMap)
            {
                var file = node is JsonValue v && v.TryGetValue<string>(out var f) ? f
                    : throw new InvalidDataException($"{index}: weight_map['{name}'] is not a file name");
                if (Path.GetFileName(file) != file)
                    throw new InvalidDataException($"{index}: shard '{file}' of '{name}' is not a file in {directory}");
                if (!shards.TryGetValue(file, out var shard))
                {
                    var path = Path.Combine(directory, file);
                    if (!File.Exists(path))
                        throw new FileNotFoundException($"{index}: shard '{file}' (holding '{name}') is missing from "
                            + directory, path);
                    shards[file] = shard = SafeTensorsFile.Open(path);
                }
                if (!shard.Tensors.ContainsKey(name))
                    throw new InvalidDataException($"{index}: '{name}' is mapped to shard '{file}', which has no "
                        + "such tensor");
                shardOf[name] = shard;
            }
        }
        catch
        {
            foreach (var shard in shards.Values) shard.Dispose();
            throw;
        }
        return new HfCheckpoint(directory, IndexFile, shards.Values.ToArray(), shardOf);
    }

    public void Dispose()
    {
        foreach (var shard in _shards) shard.Dispose();
    }
}
