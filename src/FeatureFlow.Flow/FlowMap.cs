using System.Globalization;
using System.Security.Cryptography;
using FeatureFlow.Models;
using FeatureFlow.Models.Formats;
using FeatureFlow.Sae;

namespace FeatureFlow.Flow;

public enum FlowCategory { Translated, Processed, Newborn, Unexplained }

/// <summary>
/// When a match counts as "high". The paper's thresholds are per layer and unpublished; these are our
/// defaults: a residual predecessor at cosine ≥ 0.5 (the flow graph's own cut) and a module
/// predecessor at ≥ 0.3.
/// </summary>
public sealed record FlowThresholds(float Residual = 0.5f, float Module = 0.3f);

/// <summary>One feature's three predecessors (resid is null at layer 0, which has no R(−1) SAE).</summary>
public sealed record Predecessors(FeatureId Feature, (FeatureId Feature, float Score)? Resid, (FeatureId Feature, float Score) Mlp, (FeatureId Feature, float Score) Attn);

/// <summary>
/// The data-free flow map of a model's SAEs: for every layer L and every feature of
/// <c>blocks.L.hook_resid_post</c>, its top-1 cosine predecessor and score in R(L−1), M(L) and A(L);
/// plus the forward matches (each R(L−1) feature's best R(L) feature) that flow graphs walk forward with.
/// </summary>
public sealed class FlowMap
{
    private readonly Matches?[] _residBack, _residForward;
    private readonly Matches[] _mlpBack, _attnBack;

    private FlowMap(int layers, Matches?[] residBack, Matches[] mlpBack, Matches[] attnBack, Matches?[] residForward, IReadOnlyDictionary<string, string> metadata)
    {
        Layers = layers;
        _residBack = residBack;
        _mlpBack = mlpBack;
        _attnBack = attnBack;
        _residForward = residForward;
        Metadata = metadata;
    }

    public const string FileName = "flow_map.safetensors";
    public int Layers { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }

    public int ResidFeatures(int layer) => _mlpBack[layer].Index.Length;

    public static FlowMap Build(SaeSet saes, int layers, CosineMatcher matcher, Action<int, int>? progress = null)
    {
        var residBack = new Matches?[layers];
        var residForward = new Matches?[layers];
        var mlpBack = new Matches[layers];
        var attnBack = new Matches[layers];
        var metadata = new SortedDictionary<string, string>(StringComparer.Ordinal);
        for (var l = 0; l < layers; l++)
        {
            var resid = saes.Get(new Site(l, SiteKind.ResidPost), "flow build");
            var mlp = saes.Get(new Site(l, SiteKind.MlpOut), "flow build");
            var attn = saes.Get(new Site(l, SiteKind.AttnOut), "flow build");
            foreach (var sae in new[] { resid, mlp, attn })
                metadata[$"sae.{sae.Site.HookName}.decoder_sha256"] = Convert.ToHexStringLower(SHA256.HashData(System.Runtime.InteropServices.MemoryMarshal.AsBytes(sae.Decoder.AsSpan())));
            mlpBack[l] = matcher.Match(resid.Decoder, mlp.Decoder, resid.DIn).Backward;
            attnBack[l] = matcher.Match(resid.Decoder, attn.Decoder, resid.DIn).Backward;
            if (l > 0)
            {
                var previous = saes.Get(new Site(l - 1, SiteKind.ResidPost), "flow build");
                (residBack[l], residForward[l]) = matcher.Match(resid.Decoder, previous.Decoder, resid.DIn);
            }
            progress?.Invoke(l + 1, layers);
        }
        metadata["layers"] = layers.ToString(CultureInfo.InvariantCulture);
        metadata["matcher"] = "top-1 cosine of unit-normalised SAE decoder rows";
        metadata["execution_provider"] = matcher.Provider.Name;
        return new FlowMap(layers, residBack, mlpBack, attnBack, residForward, metadata);
    }

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
        var residHigh = p.Resid is { } r && r.Score >= t.Residual;
        var moduleHigh = p.Mlp.Score >= t.Module || p.Attn.Score >= t.Module;
        return (residHigh, moduleHigh) switch
        {
            (true, false) => FlowCategory.Translated,
            (true, true) => FlowCategory.Processed,
            (false, true) => FlowCategory.Newborn,
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
