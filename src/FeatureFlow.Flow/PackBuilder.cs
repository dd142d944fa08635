using System.Globalization;
using FeatureFlow.Models;
using FeatureFlow.Models.Folder;
using FeatureFlow.Sae;
using FeatureFlow.Steering;
using FeatureFlow.Steering.Packs;

namespace FeatureFlow.Flow;

/// <summary>Which flow-graph nodes a pack steers (the paper's three settings).</summary>
public enum PackMode
{
    /// <summary>Only the graph's nodes at layer l.</summary>
    SingleLayer,
    /// <summary>The graph's nodes at layers l_start..l.</summary>
    Cumulative,
    /// <summary>Only the hand-picked features (the seed, or the explicit list).</summary>
    Baseline,
}

public enum PackSchedule { Constant, Linear, Exponential }

public enum PackOperation { Promote, Rescale, Clamp }

public sealed record PackBuildOptions
{
    public required string Name { get; init; }
    public string Description { get; init; } = "";
    public PackMode Mode { get; init; } = PackMode.Cumulative;
    /// <summary>l for single-layer and cumulative modes; null = the graph's last layer.</summary>
    public int? Layer { get; init; }
    public PackSchedule Schedule { get; init; } = PackSchedule.Constant;
    public PackOperation Operation { get; init; } = PackOperation.Promote;
    /// <summary>s (promote), r (rescale) or c (clamp) before the schedule.</summary>
    public float Value { get; init; } = 1f;
    /// <summary>Linear schedule: the coefficient reached at l_end (the paper's s* = 1).</summary>
    public float LinearEnd { get; init; } = 1f;
    /// <summary>Exponential schedule: s·e^{α·l} (the paper's α = −0.05).</summary>
    public float ExponentialAlpha { get; init; } = -0.05f;
    /// <summary>Exponential schedule: l counted from l_start instead of from block 0.</summary>
    public bool ExponentialRelative { get; init; }
    /// <summary>Coefficients of promote and clamp in units of each feature's threshold (JumpReLU θ) instead of raw units.</summary>
    public bool ThresholdUnits { get; init; }
    public float DefaultStrength { get; init; } = 1f;
    public float[] RecommendedRange { get; init; } = [0f, 2f];
    public string BuildCommand { get; init; } = "";
    public IReadOnlyList<string> ThemeWords { get; init; } = [];
}

/// <summary><c>featureflow steer build</c>: a flow graph (or a feature list) and a recipe → a steering pack.</summary>
public static class PackBuilder
{
    public static SteeringPack Build(FlowGraph? graph, IReadOnlyList<FeatureId> features, SaeSet saes, ModelManifest manifest, PackBuildOptions o)
    {
        var nodes = Select(graph, features, o);
        if (nodes.Count == 0) throw new ArgumentException("the pack would steer no feature (check --mode and --layer against the flow graph's layers)");
        int lStart = nodes.Min(n => n.Feature.Site.Layer), lEnd = nodes.Max(n => n.Feature.Site.Layer);
        if (graph is not null) (lStart, lEnd) = (graph.LStart, graph.LEnd);

        var terms = new List<SteeringTerm>();
        foreach (var node in nodes)
        {
            var sae = saes.Get(node.Feature.Site, "feature");
            sae.CheckFeature(node.Feature.Index, "feature");
            var (decoder, encoder, bias, threshold) = sae.HookFeature(node.Feature.Index);
            var coefficient = Coefficient(o, node.Feature.Site.Layer, lStart, lEnd);
            if (o.ThresholdUnits && o.Operation != PackOperation.Rescale)
            {
                if (!(threshold > 0f)) throw new InvalidDataException($"{node.Feature}: threshold units need a positive per-feature threshold, and this feature has {threshold}");
                coefficient *= threshold;
            }
            terms.Add(o.Operation switch
            {
                PackOperation.Promote => new SteeringTerm(node.Feature.Site, SteeringOperation.Add, coefficient, new FeatureVector(decoder)),
                PackOperation.Rescale => new SteeringTerm(node.Feature.Site, SteeringOperation.Rescale, coefficient, new FeatureVector(decoder, encoder, bias, threshold)),
                _ => new SteeringTerm(node.Feature.Site, SteeringOperation.Clamp, coefficient, new FeatureVector(decoder, encoder, bias, threshold)),
            });
        }
        var metadata = new PackMetadata
        {
            Name = o.Name,
            Description = o.Description,
            ModelFingerprint = SteeringPack.Fingerprint(manifest),
            Seed = graph?.Seed.ToString() ?? string.Join(",", features),
            Sources = nodes.Select(n => new PackSource(n.Feature.ToString(), n.Score, n.Role)).ToArray(),
            Mode = Kebab(o.Mode.ToString()),
            Schedule = o.Schedule switch
            {
                PackSchedule.Constant => "constant",
                PackSchedule.Linear => string.Create(CultureInfo.InvariantCulture, $"linear to {o.LinearEnd} at layer {lEnd}"),
                _ => string.Create(CultureInfo.InvariantCulture, $"exponential alpha {o.ExponentialAlpha} ({(o.ExponentialRelative ? "relative to l_start" : "absolute layer index")})"),
            },
            Operation = o.Operation.ToString().ToLowerInvariant(),
            Units = o.ThresholdUnits && o.Operation != PackOperation.Rescale ? "threshold" : "raw",
            DefaultStrength = o.DefaultStrength,
            RecommendedRange = o.RecommendedRange,
            BuildCommand = o.BuildCommand,
            ThemeWords = o.ThemeWords,
        };
        return new SteeringPack(metadata, terms);
    }

    /// <summary>The nodes to steer, in site order (so equal recipes give byte-identical packs).</summary>
    private static List<FlowNode> Select(FlowGraph? graph, IReadOnlyList<FeatureId> features, PackBuildOptions o)
    {
        IEnumerable<FlowNode> nodes;
        if (graph is null) nodes = features.Select(f => new FlowNode(f, 1f, "explicit"));
        else
        {
            var l = o.Layer ?? graph.LEnd;
            nodes = o.Mode switch
            {
                PackMode.Baseline => graph.Nodes.Where(n => n.Role == "seed"),
                PackMode.SingleLayer => graph.Nodes.Where(n => n.Feature.Site.Layer == l),
                _ => graph.Nodes.Where(n => n.Feature.Site.Layer >= graph.LStart && n.Feature.Site.Layer <= l),
            };
        }
        return nodes.OrderBy(n => n.Feature.Site.Index).ThenBy(n => n.Feature.Index).ToList();
    }

    /// <summary>The schedule's coefficient at <paramref name="layer"/>.</summary>
    public static float Coefficient(PackBuildOptions o, int layer, int lStart, int lEnd) => o.Schedule switch
    {
        PackSchedule.Constant => o.Value,
        PackSchedule.Linear => lEnd == lStart ? o.Value : o.Value + (o.LinearEnd - o.Value) * (layer - lStart) / (float)(lEnd - lStart),
        _ => o.Value * MathF.Exp(o.ExponentialAlpha * (o.ExponentialRelative ? layer - lStart : layer)),
    };

    private static string Kebab(string pascal) => string.Concat(pascal.Select((c, i) => char.IsUpper(c) && i > 0 ? "-" + char.ToLowerInvariant(c) : char.ToLowerInvariant(c).ToString()));
}
