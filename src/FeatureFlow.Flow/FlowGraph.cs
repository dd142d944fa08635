using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using FeatureFlow.Models;

namespace FeatureFlow.Flow;

public sealed record FlowGraphOptions
{
    /// <summary>The paper's absolute values, used when neither an explicit value nor a chance level is there.</summary>
    public const float AbsoluteResidualCut = 0.5f, AbsoluteModuleThreshold = 0.15f;

    /// <summary>
    /// The chain stops at a residual edge into R(L) with cosine below this; null = the flow map's chance
    /// level of R(L−1)→R(L).
    /// </summary>
    public float? ResidualCut { get; init; }
    /// <summary>MLP/attention matches of R(L) below this are dropped; null = the chance level of M(L)/A(L)→R(L).</summary>
    public float? ModuleThreshold { get; init; }
    /// <summary>
    /// Forward step rule (the paper leaves it open): true = the next layer's feature whose backward match
    /// is this node, best score first, else the forward arg-max; false = always the forward arg-max.
    /// </summary>
    public bool BackwardConsistentForward { get; init; } = true;
}

public sealed record FlowNode(FeatureId Feature, float Score, string Role);

public sealed record FlowEdge(FeatureId From, FeatureId To, float Score);

/// <summary>
/// A feature's flow graph: one residual node per layer from l_start to l_end (the chain cut where the
/// residual cosine falls under the cut), each with its layer's MLP and attention matches that pass
/// the module threshold.
/// </summary>
public sealed class FlowGraph
{
    private FlowGraph(FeatureId seed, IReadOnlyList<FlowNode> nodes, IReadOnlyList<FlowEdge> edges,
        FlowGraphOptions options, string residualCutSource, string moduleThresholdSource)
    {
        Seed = seed;
        Nodes = nodes;
        Edges = edges;
        Options = options;
        ResidualCutSource = residualCutSource;
        ModuleThresholdSource = moduleThresholdSource;
    }

    public FeatureId Seed { get; }
    public IReadOnlyList<FlowNode> Nodes { get; }
    public IReadOnlyList<FlowEdge> Edges { get; }
    public FlowGraphOptions Options { get; }
    /// <summary>Where the cut and the module threshold came from (explicit, chance level, absolute fallback).</summary>
    public string ResidualCutSource { get; }
    public string ModuleThresholdSource { get; }
    public IEnumerable<FlowNode> ResidualChain => Nodes.Where(n => n.Feature.Site.Kind == SiteKind.ResidPost).OrderBy(n => n.Feature.Site.Layer);
    public int LStart => ResidualChain.First().Feature.Site.Layer;
    public int LEnd => ResidualChain.Last().Feature.Site.Layer;

    public static FlowGraph Build(FlowMap map, FeatureId seed, FlowGraphOptions options)
    {
        map.Explain(seed); // validates the seed
        var nodes = new List<FlowNode> { new(seed, 1f, "seed") };
        var edges = new List<FlowEdge>();
        float Cut(int layer) =>
            map.Threshold(layer, PredecessorKind.Resid, options.ResidualCut, FlowGraphOptions.AbsoluteResidualCut);
        var current = seed;
        while (map.ResidPredecessor(current.Site.Layer, current.Index) is { } p && p.Score >= Cut(current.Site.Layer))
        {
            var previous = new FeatureId(new Site(current.Site.Layer - 1, SiteKind.ResidPost), p.Index);
            nodes.Add(new FlowNode(previous, p.Score, "backward"));
            edges.Add(new FlowEdge(previous, current, p.Score));
            current = previous;
        }
        current = seed;
        while (map.ResidSuccessor(current.Site.Layer, current.Index, options.BackwardConsistentForward) is { } s
               && s.Score >= Cut(current.Site.Layer + 1))
        {
            var next = new FeatureId(new Site(current.Site.Layer + 1, SiteKind.ResidPost), s.Index);
            nodes.Add(new FlowNode(next, s.Score, "forward"));
            edges.Add(new FlowEdge(current, next, s.Score));
            current = next;
        }
        foreach (var resid in nodes.ToArray())
        {
            var explained = map.Explain(resid.Feature);
            var layer = resid.Feature.Site.Layer;
            foreach (var (module, role, kind) in new[]
                     { (explained.Mlp, "mlp", PredecessorKind.Mlp), (explained.Attn, "attn", PredecessorKind.Attn) })
                if (module.Score >= map.Threshold(layer, kind, options.ModuleThreshold, FlowGraphOptions.AbsoluteModuleThreshold))
                {
                    nodes.Add(new FlowNode(module.Feature, module.Score, role));
                    edges.Add(new FlowEdge(module.Feature, resid.Feature, module.Score));
                }
        }
        return new FlowGraph(seed, nodes, edges, options,
            map.ThresholdSource(options.ResidualCut), map.ThresholdSource(options.ModuleThreshold));
    }

    public JsonObject ToJson() => new()
    {
        ["seed"] = Seed.ToString(),
        ["l_start"] = LStart,
        ["l_end"] = LEnd,
        // A number when given explicitly, else where the per-layer thresholds came from.
        ["residual_cut"] = Options.ResidualCut is { } cut ? JsonValue.Create(cut) : JsonValue.Create(ResidualCutSource),
        ["module_threshold"] = Options.ModuleThreshold is { } module
            ? JsonValue.Create(module) : JsonValue.Create(ModuleThresholdSource),
        ["forward_rule"] = Options.BackwardConsistentForward ? "backward-consistent" : "forward-argmax",
        ["nodes"] = new JsonArray(Nodes.Select(n => (JsonNode)new JsonObject
        {
            ["feature"] = n.Feature.ToString(),
            ["short"] = n.Feature.Short,
            ["layer"] = n.Feature.Site.Layer,
            ["site"] = n.Feature.Site.HookName,
            ["index"] = n.Feature.Index,
            ["role"] = n.Role,
            ["score"] = Math.Round(n.Score, 6),
        }).ToArray()),
        ["edges"] = new JsonArray(Edges.Select(e => (JsonNode)new JsonObject
        {
            ["from"] = e.From.ToString(),
            ["to"] = e.To.ToString(),
            ["score"] = Math.Round(e.Score, 6),
        }).ToArray()),
    };

    public string ToDot()
    {
        var sb = new StringBuilder();
        sb.AppendLine("digraph flow {");
        sb.AppendLine("  rankdir=LR; node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\"];");
        foreach (var n in Nodes)
            sb.AppendLine(CultureInfo.InvariantCulture, $"  \"{n.Feature.Short}\" [fillcolor=\"{Colour(n)}\"];");
        foreach (var e in Edges)
            sb.AppendLine(CultureInfo.InvariantCulture, $"  \"{e.From.Short}\" -> \"{e.To.Short}\" [label=\"{e.Score:F2}\"];");
        sb.AppendLine("}");
        return sb.ToString();
    }

    /// <summary>A self-contained SVG: one column per layer, attention above, residual in the middle, MLP below.</summary>
    public string ToSvg()
    {
        const int colWidth = 170, left = 30, boxW = 120, boxH = 34;
        int Row(SiteKind k) => k switch { SiteKind.AttnOut => 50, SiteKind.ResidPost => 150, _ => 250 };
        int X(FeatureId f) => left + (f.Site.Layer - Math.Min(LStart, Nodes.Min(n => n.Feature.Site.Layer))) * colWidth;
        var layers = Nodes.Select(n => n.Feature.Site.Layer).Distinct().Count();
        var width = left * 2 + layers * colWidth;
        var sb = new StringBuilder();
        sb.AppendLine(CultureInfo.InvariantCulture, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"330\" font-family=\"Helvetica, Arial, sans-serif\" font-size=\"13\">");
        sb.AppendLine("<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
        var thresholds = $"residual cut {Describe(Options.ResidualCut, ResidualCutSource)}, " +
            $"module threshold {Describe(Options.ModuleThreshold, ModuleThresholdSource)}";
        sb.AppendLine(CultureInfo.InvariantCulture, $"<text x=\"{left}\" y=\"20\" font-size=\"14\" font-weight=\"bold\">" +
            $"flow graph of {Escape(Seed.Short)} ({thresholds})</text>");
        foreach (var e in Edges)
        {
            int x1 = X(e.From) + boxW / 2, y1 = Row(e.From.Site.Kind) + boxH / 2, x2 = X(e.To) + boxW / 2, y2 = Row(e.To.Site.Kind) + boxH / 2;
            sb.AppendLine(CultureInfo.InvariantCulture, $"<line x1=\"{x1}\" y1=\"{y1}\" x2=\"{x2}\" y2=\"{y2}\" stroke=\"#555\" stroke-width=\"{1 + 3 * e.Score:F1}\"/>");
            sb.AppendLine(CultureInfo.InvariantCulture, $"<text x=\"{(x1 + x2) / 2 + 4}\" y=\"{(y1 + y2) / 2 - 4}\" fill=\"#333\">{e.Score:F2}</text>");
        }
        foreach (var n in Nodes)
        {
            int x = X(n.Feature), y = Row(n.Feature.Site.Kind);
            sb.AppendLine(CultureInfo.InvariantCulture, $"<rect x=\"{x}\" y=\"{y}\" width=\"{boxW}\" height=\"{boxH}\" rx=\"8\" fill=\"{Colour(n)}\" stroke=\"#222\"/>");
            sb.AppendLine(CultureInfo.InvariantCulture, $"<text x=\"{x + boxW / 2}\" y=\"{y + 22}\" text-anchor=\"middle\">{Escape(n.Feature.Short)}</text>");
        }
        sb.AppendLine("</svg>");
        return sb.ToString();
    }

    private static string Describe(float? value, string source) =>
        value is { } v ? v.ToString("F2", CultureInfo.InvariantCulture) : Escape(source);

    private static string Colour(FlowNode n) => n.Role switch
    {
        "seed" => "#ffd166",
        "mlp" => "#a0d2eb",
        "attn" => "#c3b1e1",
        _ => "#b7e4c7",
    };

    private static string Escape(string s) => s.Replace("&", "&amp;", StringComparison.Ordinal).Replace("<", "&lt;", StringComparison.Ordinal);
}
