using System.Globalization;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using FeatureFlow.Models;
using FeatureFlow.Models.Formats;
using FeatureFlow.Sae;

namespace FeatureFlow.Flow;

/// <summary>
/// The paper's categories with the module that explains the feature: translated = high residual predecessor
/// only; processed = high residual and a high MLP and/or attention predecessor; newborn = low residual, high
/// module; unexplained = all low.
/// </summary>
public enum FlowCategory
{
    Translated, ProcessedMlp, ProcessedAttn, ProcessedBoth, NewbornMlp, NewbornAttn, NewbornBoth, Unexplained,
}

public static class FlowCategories
{
    public static IReadOnlyList<FlowCategory> All { get; } = Enum.GetValues<FlowCategory>();

    /// <summary>processed-mlp, newborn-both, …</summary>
    public static string Name(this FlowCategory c) => c switch
    {
        FlowCategory.Translated or FlowCategory.Unexplained => c.Group(),
        _ => $"{c.Group()}-{c.Module()}",
    };

    /// <summary>The paper's four: translated, processed, newborn, unexplained.</summary>
    public static string Group(this FlowCategory c) => c switch
    {
        FlowCategory.Translated => "translated",
        FlowCategory.ProcessedMlp or FlowCategory.ProcessedAttn or FlowCategory.ProcessedBoth => "processed",
        FlowCategory.NewbornMlp or FlowCategory.NewbornAttn or FlowCategory.NewbornBoth => "newborn",
        _ => "unexplained",
    };

    /// <summary>Which module explains the feature: mlp, attn, both, or null (translated, unexplained).</summary>
    public static string? Module(this FlowCategory c) => c switch
    {
        FlowCategory.ProcessedMlp or FlowCategory.NewbornMlp => "mlp",
        FlowCategory.ProcessedAttn or FlowCategory.NewbornAttn => "attn",
        FlowCategory.ProcessedBoth or FlowCategory.NewbornBoth => "both",
        _ => null,
    };
}

/// <summary>
/// When a predecessor counts as "high". Null (the default) = the flow map's chance level for that layer and
/// kind (<see cref="ChanceLevel"/>); a value = that cosine at every layer, as in the paper (which publishes none).
/// </summary>
public sealed record FlowThresholds(float? Residual = null, float? Module = null)
{
    /// <summary>For maps without a chance level: residual 0.5 (the paper's graph cut) and module 0.3.</summary>
    public const float AbsoluteResidual = 0.5f, AbsoluteModule = 0.3f;
}

/// <summary>One feature's three predecessors (resid is null at layer 0, which has no R(−1) SAE).</summary>
public sealed record Predecessors(FeatureId Feature, (FeatureId Feature, float Score)? Resid, (FeatureId Feature, float Score) Mlp, (FeatureId Feature, float Score) Attn);

/// <summary>
/// The data-free flow map of a model's SAEs: for every layer L and every feature of
/// <c>blocks.L.hook_resid_post</c>, its top-1 cosine predecessor and score in R(L−1), M(L) and A(L);
/// plus the forward matches (each R(L−1) feature's best R(L) feature) that flow graphs walk forward with, and
/// the chance level of each of those pairs (<see cref="ChanceLevel"/>, stored as <c>chance.*</c> metadata).
/// </summary>
public sealed class FlowMap
{
    private readonly Matches?[] _residBack, _residForward;
    private readonly Matches[] _mlpBack, _attnBack;
    private readonly IReadOnlyDictionary<(int Layer, PredecessorKind Kind), NullDistribution>? _chance;

    private FlowMap(int layers, Matches?[] residBack, Matches[] mlpBack, Matches[] attnBack, Matches?[] residForward,
        IReadOnlyDictionary<string, string> metadata)
    {
        Layers = layers;
        _residBack = residBack;
        _mlpBack = mlpBack;
        _attnBack = attnBack;
        _residForward = residForward;
        Metadata = metadata;
        (ChanceOptions, _chance) = ReadChanceLevel(metadata, layers);
    }

    public const string FileName = "flow_map.safetensors";
    public int Layers { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>How the stored chance level was estimated; null for maps built before it was stored.</summary>
    public ChanceLevelOptions? ChanceOptions { get; }

    public bool HasChanceLevel => _chance is not null;

    public int ResidFeatures(int layer) => _mlpBack[layer].Index.Length;

    /// <summary>The flow map of <paramref name="saes"/>, with each pair's chance level (<see cref="ChanceLevel"/>).</summary>
    public static FlowMap Build(SaeSet saes, int layers, CosineMatcher matcher, Action<int, int>? progress = null,
        ChanceLevelOptions? chance = null)
    {
        var residBack = new Matches?[layers];
        var residForward = new Matches?[layers];
        var mlpBack = new Matches[layers];
        var attnBack = new Matches[layers];
        var metadata = new SortedDictionary<string, string>(StringComparer.Ordinal);
        var d = saes.Get(new Site(0, SiteKind.ResidPost), "flow build").DIn;
        var nulls = new ChanceLevel(d, chance ?? new ChanceLevelOptions());
        for (var l = 0; l < layers; l++)
        {
            var resid = saes.Get(new Site(l, SiteKind.ResidPost), "flow build");
            var mlp = saes.Get(new Site(l, SiteKind.MlpOut), "flow build");
            var attn = saes.Get(new Site(l, SiteKind.AttnOut), "flow build");
            foreach (var sae in new[] { resid, mlp, attn })
                metadata[DecoderHashKey(sae.Site)] = DecoderHash(sae);
            mlpBack[l] = matcher.Match(resid.Decoder, mlp.Decoder, resid.DIn).Backward;
            attnBack[l] = matcher.Match(resid.Decoder, attn.Decoder, resid.DIn).Backward;
            if (l > 0)
            {
                var previous = saes.Get(new Site(l - 1, SiteKind.ResidPost), "flow build");
                (residBack[l], residForward[l]) = matcher.Match(resid.Decoder, previous.Decoder, resid.DIn);
            }
            EstimateLayer(saes, l, matcher, nulls, metadata);
            progress?.Invoke(l + 1, layers);
        }
        metadata["layers"] = layers.ToString(CultureInfo.InvariantCulture);
        metadata["matcher"] = "top-1 cosine of unit-normalised SAE decoder rows";
        metadata["execution_provider"] = matcher.Provider.Name;
        WriteChanceOptions(nulls.Options, metadata);
        return new FlowMap(layers, residBack, mlpBack, attnBack, residForward, metadata);
    }

    /// <summary>
    /// This map with its chance level estimated now, for a map file written before the chance level was
    /// stored. The SAEs must be the ones the map was built from (their decoder hashes are checked).
    /// </summary>
    public FlowMap WithChanceLevel(SaeSet saes, CosineMatcher matcher, ChanceLevelOptions? options = null)
    {
        var metadata = new SortedDictionary<string, string>(Metadata.ToDictionary(), StringComparer.Ordinal);
        var d = saes.Get(new Site(0, SiteKind.ResidPost), "the chance level").DIn;
        var nulls = new ChanceLevel(d, options ?? new ChanceLevelOptions());
        for (var l = 0; l < Layers; l++)
        {
            foreach (var kind in new[] { SiteKind.ResidPost, SiteKind.MlpOut, SiteKind.AttnOut })
            {
                var sae = saes.Get(new Site(l, kind), "the chance level");
                if (!Metadata.TryGetValue(DecoderHashKey(sae.Site), out var hash) || hash != DecoderHash(sae))
                    throw new InvalidDataException(
                        $"the SAE at {sae.Site} is not the one this flow map was built from (decoder hash differs)");
            }
            EstimateLayer(saes, l, matcher, nulls, metadata);
        }
        WriteChanceOptions(nulls.Options, metadata);
        return new FlowMap(Layers, _residBack, _mlpBack, _attnBack, _residForward, metadata);
    }

    private static string DecoderHashKey(Site site) => $"sae.{site.HookName}.decoder_sha256";

    private static string DecoderHash(SparseAutoencoder sae) =>
        Convert.ToHexStringLower(SHA256.HashData(MemoryMarshal.AsBytes(sae.Decoder.AsSpan())));

    private static void EstimateLayer(SaeSet saes, int layer, CosineMatcher matcher, ChanceLevel nulls,
        IDictionary<string, string> metadata)
    {
        var target = saes.Get(new Site(layer, SiteKind.ResidPost), "the chance level").Decoder;
        var sources = new List<(PredecessorKind, Site)>
        {
            (PredecessorKind.Mlp, new Site(layer, SiteKind.MlpOut)), (PredecessorKind.Attn, new Site(layer, SiteKind.AttnOut)),
        };
        if (layer > 0) sources.Insert(0, (PredecessorKind.Resid, new Site(layer - 1, SiteKind.ResidPost)));
        foreach (var (kind, site) in sources)
        {
            var n = nulls.Estimate(matcher, target, saes.Get(site, "the chance level").Decoder);
            var key = ChanceLevel.Key(layer, kind);
            metadata[key + ".threshold"] = n.Threshold.ToString("R", CultureInfo.InvariantCulture);
            metadata[key + ".mean"] = n.Mean.ToString("R", CultureInfo.InvariantCulture);
            metadata[key + ".histogram"] = string.Join(',', n.Histogram);
        }
    }

    private static void WriteChanceOptions(ChanceLevelOptions options, IDictionary<string, string> metadata)
    {
        metadata["chance.method"] =
            "best cosine of each R(L) decoder row among Haar-randomly rotated copies of the source decoder";
        metadata["chance.seed"] = options.Seed.ToString(CultureInfo.InvariantCulture);
        metadata["chance.rotations"] = options.Rotations.ToString(CultureInfo.InvariantCulture);
        metadata["chance.percentile"] = options.Percentile.ToString("R", CultureInfo.InvariantCulture);
    }

    private static (ChanceLevelOptions?, IReadOnlyDictionary<(int, PredecessorKind), NullDistribution>?)
        ReadChanceLevel(IReadOnlyDictionary<string, string> metadata, int layers)
    {
        if (!metadata.TryGetValue("chance.percentile", out var percentile)) return (null, null);
        string Get(string key) =>
            metadata.TryGetValue(key, out var v) ? v : throw new InvalidDataException($"flow map metadata lacks '{key}'");
        var options = new ChanceLevelOptions
        {
            Seed = int.Parse(Get("chance.seed"), CultureInfo.InvariantCulture),
            Rotations = int.Parse(Get("chance.rotations"), CultureInfo.InvariantCulture),
            Percentile = double.Parse(percentile, CultureInfo.InvariantCulture),
        };
        var nulls = new Dictionary<(int, PredecessorKind), NullDistribution>();
        for (var l = 0; l < layers; l++)
            foreach (var kind in Enum.GetValues<PredecessorKind>().Where(k => l > 0 || k != PredecessorKind.Resid))
            {
                var key = ChanceLevel.Key(l, kind);
                var histogram = Get(key + ".histogram").Split(',').Select(c => int.Parse(c, CultureInfo.InvariantCulture));
                nulls[(l, kind)] = new NullDistribution(double.Parse(Get(key + ".mean"), CultureInfo.InvariantCulture),
                    float.Parse(Get(key + ".threshold"), CultureInfo.InvariantCulture), histogram.ToArray());
            }
        return (options, nulls);
    }

    /// <summary>The null of one pair; none at layer 0's residual (no R(−1) SAE) or in maps without a chance level.</summary>
    public NullDistribution? Null(int layer, PredecessorKind kind) => _chance?.GetValueOrDefault((layer, kind));

    /// <summary>
    /// The score at or above which a predecessor of an R(<paramref name="layer"/>) feature counts: the explicit
    /// value when given, else this map's chance level for the pair, else <paramref name="fallback"/>.
    /// </summary>
    public float Threshold(int layer, PredecessorKind kind, float? explicitValue, float fallback) =>
        explicitValue ?? Null(layer, kind)?.Threshold ?? fallback;

    public float Threshold(int layer, PredecessorKind kind, FlowThresholds t) => kind == PredecessorKind.Resid
        ? Threshold(layer, kind, t.Residual, FlowThresholds.AbsoluteResidual)
        : Threshold(layer, kind, t.Module, FlowThresholds.AbsoluteModule);

    /// <summary>Where a threshold without an explicit value comes from, in words (for outputs).</summary>
    public string ThresholdSource(float? explicitValue) =>
        explicitValue is not null ? "explicit"
        : ChanceOptions is { } o
            ? string.Create(CultureInfo.InvariantCulture, $"chance level (p{o.Percentile:0.##} of {o.Rotations} rotations)")
        : "absolute fallback (this flow map has no chance level)";

    public Predecessors Explain(FeatureId feature)
    {
        RequireResid(feature);
        var (l, f) = (feature.Site.Layer, feature.Index);
        (FeatureId, float)? resid = _residBack[l] is { } r ? (new FeatureId(new Site(l - 1, SiteKind.ResidPost), r.Index[f]), r.Score[f]) : null;
        return new Predecessors(feature, resid,
            (new FeatureId(new Site(l, SiteKind.MlpOut), _mlpBack[l].Index[f]), _mlpBack[l].Score[f]),
            (new FeatureId(new Site(l, SiteKind.AttnOut), _attnBack[l].Index[f]), _attnBack[l].Score[f]));
    }

    public FlowCategory Category(Predecessors p, FlowThresholds t)
    {
        var l = p.Feature.Site.Layer;
        var resid = p.Resid is { } r && r.Score >= Threshold(l, PredecessorKind.Resid, t);
        var mlp = p.Mlp.Score >= Threshold(l, PredecessorKind.Mlp, t);
        var attn = p.Attn.Score >= Threshold(l, PredecessorKind.Attn, t);
        return (resid, mlp, attn) switch
        {
            (true, false, false) => FlowCategory.Translated,
            (true, true, false) => FlowCategory.ProcessedMlp,
            (true, false, true) => FlowCategory.ProcessedAttn,
            (true, true, true) => FlowCategory.ProcessedBoth,
            (false, true, false) => FlowCategory.NewbornMlp,
            (false, false, true) => FlowCategory.NewbornAttn,
            (false, true, true) => FlowCategory.NewbornBoth,
            _ => FlowCategory.Unexplained,
        };
    }

    /// <summary>Backward residual predecessor of an R(L) feature (null at layer 0).</summary>
    public (int Index, float Score)? ResidPredecessor(int layer, int feature) =>
        _residBack[layer] is { } m ? (m.Index[feature], m.Score[feature]) : null;

    /// <summary>
    /// The R(L+1) successor of an R(L) feature: among R(L+1) features whose backward match is this one,
    /// the best scoring; if none, the forward arg-max (<paramref name="backwardConsistent"/> false: always the arg-max).
    /// </summary>
    public (int Index, float Score)? ResidSuccessor(int layer, int feature, bool backwardConsistent)
    {
        if (layer + 1 >= Layers) return null;
        var back = _residBack[layer + 1]!;
        if (backwardConsistent)
        {
            var best = -1;
            for (var g = 0; g < back.Index.Length; g++)
                if (back.Index[g] == feature && (best < 0 || back.Score[g] > back.Score[best])) best = g;
            if (best >= 0) return (best, back.Score[best]);
        }
        var forward = _residForward[layer + 1]!;
        return (forward.Index[feature], forward.Score[feature]);
    }

    private void RequireResid(FeatureId feature)
    {
        if (feature.Site.Kind != SiteKind.ResidPost)
            throw new ArgumentException($"{feature}: the flow map explains residual features (blocks.L.hook_resid_post/N)");
        if (feature.Site.Layer >= Layers) throw new ArgumentException($"{feature}: layer {feature.Site.Layer} is past the flow map's {Layers} layers");
        if ((uint)feature.Index >= (uint)ResidFeatures(feature.Site.Layer))
            throw new ArgumentException($"{feature}: the SAE at {feature.Site} has features 0..{ResidFeatures(feature.Site.Layer) - 1}");
    }

    public void Save(string path)
    {
        var w = new SafeTensorsWriter();
        foreach (var (k, v) in Metadata) w.Metadata(k, v);
        void Add(string name, Matches? m)
        {
            if (m is null) return;
            w.AddInt32($"{name}.index", m.Index, m.Index.Length);
            w.AddFloat32($"{name}.score", m.Score, m.Score.Length);
        }
        for (var l = 0; l < Layers; l++)
        {
            Add($"{l}.resid.backward", _residBack[l]);
            Add($"{l}.mlp.backward", _mlpBack[l]);
            Add($"{l}.attn.backward", _attnBack[l]);
            Add($"{l}.resid.forward", _residForward[l]);
        }
        w.Write(path);
    }

    public static FlowMap Load(string path)
    {
        var file = SafeTensorsFile.Read(path);
        if (!file.Metadata.TryGetValue("layers", out var layersText) || !int.TryParse(layersText, CultureInfo.InvariantCulture, out var layers))
            throw new InvalidDataException($"{path}: not a flow map (no 'layers' metadata)");
        Matches? Get(string name) => file.Tensors.ContainsKey($"{name}.index") ? new Matches(file.GetInt32($"{name}.index"), file.GetFloat32($"{name}.score")) : null;
        Matches Require(string name) => Get(name) ?? throw new InvalidDataException($"{path}: '{name}' is missing");
        var range = Enumerable.Range(0, layers).ToArray();
        return new FlowMap(layers,
            range.Select(l => Get($"{l}.resid.backward")).ToArray(),
            range.Select(l => Require($"{l}.mlp.backward")).ToArray(),
            range.Select(l => Require($"{l}.attn.backward")).ToArray(),
            range.Select(l => Get($"{l}.resid.forward")).ToArray(),
            file.Metadata);
    }
}
