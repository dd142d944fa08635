using FeatureFlow.Models;
using FeatureFlow.Sae.Formats;

namespace FeatureFlow.Sae;

/// <summary>A model's SAEs, one SAELens folder per site under one directory (folder name = hook name).</summary>
public sealed class SaeSet
{
    private readonly Dictionary<Site, SparseAutoencoder> _saes;

    private SaeSet(string directory, Dictionary<Site, SparseAutoencoder> saes)
    {
        Directory = directory;
        _saes = saes;
    }

    public string Directory { get; }
    public IReadOnlyDictionary<Site, SparseAutoencoder> BySite => _saes;

    /// <summary>A set held in memory (SAEs built or imported in this process).</summary>
    public static SaeSet FromSaes(IEnumerable<SparseAutoencoder> saes) => new("", saes.ToDictionary(s => s.Site));

    /// <summary>
    /// Loads every SAE folder and checks each against the model (site exists, d_in = d_model). With
    /// <paramref name="refused"/>, a bad folder is recorded there and skipped (a server keeps serving
    /// with the rest); without it, the first bad folder throws.
    /// </summary>
    public static SaeSet Load(string directory, ModelArchitecture architecture, List<(string Path, string Reason)>? refused = null)
    {
        var saes = new Dictionary<Site, SparseAutoencoder>();
        if (!System.IO.Directory.Exists(directory)) return new SaeSet(directory, saes);
        foreach (var folder in System.IO.Directory.GetDirectories(directory).Order(StringComparer.Ordinal))
        {
            if (!File.Exists(Path.Combine(folder, SaeLensFormat.ConfigFile))) continue;
            try
            {
                var sae = SaeLensFormat.Read(folder);
                Check(sae, architecture, folder);
                if (!saes.TryAdd(sae.Site, sae)) throw new InvalidDataException($"{folder}: a second SAE for {sae.Site}");
            }
            catch (Exception e) when (refused is not null && e is InvalidDataException or IOException or InvalidOperationException)
            {
                refused.Add((folder, e.Message));
            }
        }
        return new SaeSet(directory, saes);
    }

    /// <summary>
    /// Refuses an SAE that cannot read the served model: another width, a layer past the last one, or (when the
    /// model's hooked sites are given) a site the hooked graph does not carry.
    /// </summary>
    public static void Check(SparseAutoencoder sae, ModelArchitecture architecture, string source,
        IReadOnlyCollection<Site>? servedSites = null)
    {
        if (sae.DIn != architecture.DModel)
            throw new InvalidDataException($"{source}: d_in {sae.DIn} does not match the model's d_model {architecture.DModel}");
        if (sae.Site.Layer >= architecture.Layers)
            throw new InvalidDataException($"{source}: {sae.Site} is past the model's {architecture.Layers} layers");
        if (servedSites is not null && !servedSites.Contains(sae.Site))
            throw new InvalidDataException($"{source}: {sae.Site} is not one of the model's hooked sites "
                + $"({servedSites.Count} sites, {string.Join(", ", servedSites.Take(3))}, …)");
    }

    public SparseAutoencoder Get(Site site, string field) =>
        _saes.TryGetValue(site, out var sae) ? sae : throw new KeyNotFoundException($"{field}: no SAE is loaded for {site}");
}
