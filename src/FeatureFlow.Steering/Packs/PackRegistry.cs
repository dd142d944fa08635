using FeatureFlow.Models.Folder;

namespace FeatureFlow.Steering.Packs;

/// <summary>A pack file the registry refused, and why.</summary>
public sealed record PackLoadError(string Path, string Message);

/// <summary>The packs of a model folder's <c>packs/</c> directory. A bad pack is refused with its reason; the others load.</summary>
public sealed class PackRegistry
{
    private readonly Dictionary<string, SteeringPack> _packs;

    private PackRegistry(Dictionary<string, SteeringPack> packs, IReadOnlyList<PackLoadError> errors)
    {
        _packs = packs;
        Errors = errors;
    }

    public IReadOnlyCollection<SteeringPack> Packs => _packs.Values;
    public IReadOnlyList<PackLoadError> Errors { get; }

    public static PackRegistry Load(string directory, ModelManifest manifest)
    {
        var packs = new Dictionary<string, SteeringPack>(StringComparer.Ordinal);
        var errors = new List<PackLoadError>();
        if (Directory.Exists(directory))
        {
            foreach (var path in Directory.GetFiles(directory, "*" + SteeringPack.Extension).Order(StringComparer.Ordinal))
            {
                try
                {
                    var pack = SteeringPack.Read(path, manifest);
                    if (!packs.TryAdd(pack.Name, pack)) errors.Add(new PackLoadError(path, $"a pack named '{pack.Name}' is already loaded"));
                }
                catch (Exception e) when (e is InvalidDataException or IOException or KeyNotFoundException)
                {
                    errors.Add(new PackLoadError(path, e.Message));
                }
            }
        }
        return new PackRegistry(packs, errors);
    }

    public SteeringPack Get(string name, string field) =>
        _packs.TryGetValue(name, out var pack) ? pack
            : throw new FieldValidationException(field, $"no steering pack named '{name}' (loaded: {(_packs.Count == 0 ? "none" : string.Join(", ", _packs.Keys.Order(StringComparer.Ordinal)))})");
}
