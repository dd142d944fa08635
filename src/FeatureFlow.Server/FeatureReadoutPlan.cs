using FeatureFlow.Api.V1;
using FeatureFlow.Models;
using FeatureFlow.Sae;
using FeatureFlow.Steering;
using FeatureFlow.Steering.Packs;

namespace FeatureFlow.Server;

/// <summary>
/// What a request reads out: the sites the engine streams values for, and per site the SAE that turns a value
/// into feature activations, whether to report its top-k, and the listed and watched features. Built (and so
/// validated) once per request; encodes one token at a time on the request's thread, off the model loop.
/// </summary>
public sealed class FeatureReadoutPlan
{
    private sealed record SiteReadout(Site Site, SparseAutoencoder Sae, bool TopK, List<int> Features, List<(int Feature, int Slot)> Watched);

    private readonly SiteReadout[] _sites;
    private readonly int _topK;

    private FeatureReadoutPlan(SiteReadout[] sites, int topK)
    {
        _sites = sites;
        _topK = topK;
    }

    public static readonly FeatureReadoutPlan None = new([], 0);

    public bool IsEmpty => _sites.Length == 0;

    /// <summary>The sites whose values the engine must stream, in the order <see cref="Encode"/> expects them.</summary>
    public IReadOnlyList<Site> Sites => _sites.Select(s => s.Site).ToArray();

    /// <summary>Watched features in request order: (hook, index).</summary>
    public IReadOnlyList<(string Hook, int Index)> Watched { get; private init; } = [];

    public static FeatureReadoutPlan Resolve(FeatureReadout? readout, IReadOnlyList<FeatureRef> watch, SteeringCatalog catalog,
        SteeringCompiler compiler)
    {
        if ((readout is null || (readout.Hooks.Count == 0 && readout.Features.Count == 0 && readout.TopK == 0)) && watch.Count == 0) return None;
        var sites = new List<SiteReadout>();
        SiteReadout At(string hook, string field)
        {
            if (!Site.TryParse(hook, out var site, out var error)) throw new FieldValidationException(field, error);
            compiler.CheckSite(site, field);
            if (sites.FirstOrDefault(s => s.Site == site) is { } known) return known;
            SparseAutoencoder sae;
            try { sae = catalog.Saes.Get(site, field); }
            catch (KeyNotFoundException) { throw new FieldValidationException(field, $"no SAE is loaded for {site}, so its features cannot be read"); }
            var added = new SiteReadout(site, sae, false, [], []);
            sites.Add(added);
            return added;
        }
        int Feature(SiteReadout s, int index, string field) => (uint)index < (uint)s.Sae.DSae ? index
            : throw new FieldValidationException(field, $"feature {index} does not exist (the SAE at {s.Site} has features 0..{s.Sae.DSae - 1})");

        readout ??= new FeatureReadout();
        if (readout.TopK < 0) throw new FieldValidationException("readout.top_k", $"must be ≥ 0, got {readout.TopK}");
        if (readout.TopK > 0 && readout.Hooks.Count == 0) throw new FieldValidationException("readout.hooks", "top_k needs at least one hook to read");
        for (var i = 0; i < readout.Hooks.Count; i++)
        {
            var field = $"readout.hooks[{i}]";
            var s = At(readout.Hooks[i], field);
            if (s.TopK) throw new FieldValidationException(field, $"{s.Site} is listed twice");
            if (readout.TopK > s.Sae.DSae)
                throw new FieldValidationException("readout.top_k", $"{readout.TopK} is more than the SAE at {s.Site} has features ({s.Sae.DSae})");
            sites[sites.IndexOf(s)] = s with { TopK = readout.TopK > 0 };
        }
        for (var i = 0; i < readout.Features.Count; i++)
        {
            var s = At(readout.Features[i].Hook, $"readout.features[{i}].hook");
            s.Features.Add(Feature(s, readout.Features[i].Index, $"readout.features[{i}].index"));
        }
        var watched = new List<(string, int)>();
        for (var i = 0; i < watch.Count; i++)
        {
            var s = At(watch[i].Hook, $"watch[{i}].hook");
            s.Watched.Add((Feature(s, watch[i].Index, $"watch[{i}].index"), i));
            watched.Add((s.Site.HookName, watch[i].Index));
        }
        return new FeatureReadoutPlan(sites.ToArray(), readout.TopK) { Watched = watched };
    }

    /// <summary>
    /// One token's activations from its site values ([sites × d] in <see cref="Sites"/> order). Watched feature
    /// activations are added to <paramref name="watchedSums"/> (in <see cref="Watched"/> order).
    /// </summary>
    public TokenFeatures Encode(float[] siteValues, double[]? watchedSums)
    {
        var token = new TokenFeatures();
        for (var i = 0; i < _sites.Length; i++)
        {
            var s = _sites[i];
            var sae = s.Sae;
            var z = new float[sae.DSae];
            sae.Encode(siteValues.AsSpan(i * sae.DIn, sae.DIn), z, new float[sae.DIn]);
            foreach (var (index, slot) in s.Watched) watchedSums![slot] += z[index];
            if (!s.TopK && s.Features.Count == 0) continue;
            var features = new SiteFeatures { Hook = s.Site.HookName };
            if (s.TopK)
            {
                var top = new int[_topK];
                var count = SparseAutoencoder.TopIndices(z, _topK, top);
                foreach (var index in top.AsSpan(0, count))
                {
                    if (z[index] <= 0f) break;
                    features.TopIndices.Add(index);
                    features.TopValues.Add(z[index]);
                }
            }
            foreach (var index in s.Features)
            {
                features.FeatureIndices.Add(index);
                features.FeatureValues.Add(z[index]);
            }
            token.Sites.Add(features);
        }
        return token;
    }
}
