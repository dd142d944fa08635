using FeatureFlow.Models;
using FeatureFlow.Models.Folder;
using FeatureFlow.Sae;

namespace FeatureFlow.Steering.Packs;

/// <summary>
/// What steering terms can refer to by name: the model folder's packs and SAEs. Disposing stops pack reloads.
/// </summary>
public sealed class SteeringCatalog(PackRegistry packs, SaeSet saes, IReadOnlyList<(string Path, string Reason)>? refusedSaes = null)
    : IDisposable
{
    public PackRegistry Packs { get; } = packs;
    public SaeSet Saes { get; } = saes;
    /// <summary>SAE folders that could not be used, and why (the others load).</summary>
    public IReadOnlyList<(string Path, string Reason)> RefusedSaes { get; } = refusedSaes ?? [];

    /// <summary>Loads the folder's packs/ and saes/; <paramref name="packOptions"/> (e.g. watching) apply to the packs.</summary>
    public static SteeringCatalog Load(ModelFolder folder, PackRegistryOptions? packOptions = null)
    {
        var refused = new List<(string, string)>();
        var saes = SaeSet.Load(Path.Combine(folder.Directory, "saes"), folder.Manifest.Architecture, refused);
        var packs = PackRegistry.Load(Path.Combine(folder.Directory, "packs"), folder.Manifest, packOptions);
        return new SteeringCatalog(packs, saes, refused);
    }

    public void Dispose() => Packs.Dispose();

    /// <summary>The hook form of SAE feature <paramref name="index"/> at <paramref name="site"/>.</summary>
    public FeatureVector SaeFeature(Site site, int index, string field)
    {
        SparseAutoencoder sae;
        try { sae = Saes.Get(site, field); }
        catch (KeyNotFoundException) { throw new FieldValidationException(field, $"no SAE is loaded for {site}"); }
        if ((uint)index >= (uint)sae.DSae)
            throw new FieldValidationException($"{field}.index", $"feature {index} does not exist (the SAE at {site} has features 0..{sae.DSae - 1})");
        var (decoder, encoder, bias, threshold) = sae.HookFeature(index);
        return new FeatureVector(decoder, encoder, bias, threshold);
    }
}
