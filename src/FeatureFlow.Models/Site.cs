using System.Text.RegularExpressions;

namespace FeatureFlow.Models;

/// <summary>The residual-stream places of a block that carry hooks, in their order within the block.</summary>
public enum SiteKind
{
    AttnOut = 0,
    MlpOut = 1,
    ResidPost = 2,
}

/// <summary>
/// A hook site: block <see cref="Layer"/> (0-based) and <see cref="Kind"/>. This is the one type that
/// formats and parses TransformerLens hook names (<c>blocks.L.hook_attn_out</c> and friends).
/// </summary>
public readonly partial record struct Site(int Layer, SiteKind Kind)
{
    public const int KindsPerLayer = 3;

    public string HookName => $"blocks.{Layer}.{HookSuffix(Kind)}";

    /// <summary>Position in the stacked per-site steering tensors: block-major, then kind.</summary>
    public int Index => Layer * KindsPerLayer + (int)Kind;

    public static Site FromIndex(int index) => new(index / KindsPerLayer, (SiteKind)(index % KindsPerLayer));

    public static IEnumerable<Site> All(int layers) =>
        Enumerable.Range(0, layers * KindsPerLayer).Select(FromIndex);

    public static string HookSuffix(SiteKind kind) => kind switch
    {
        SiteKind.AttnOut => "hook_attn_out",
        SiteKind.MlpOut => "hook_mlp_out",
        SiteKind.ResidPost => "hook_resid_post",
        _ => throw new ArgumentOutOfRangeException(nameof(kind)),
    };

    /// <summary>
    /// Parses <c>blocks.L.hook_attn_out|hook_mlp_out|hook_resid_post</c>, and
    /// <c>blocks.L.hook_resid_pre</c> for L ≥ 1 (the same place as <c>blocks.(L-1).hook_resid_post</c>).
    /// </summary>
    public static bool TryParse(string? name, out Site site, out string error)
    {
        site = default;
        var m = name is null ? null : HookPattern().Match(name);
        if (m is null || !m.Success)
        {
            error = $"'{name}' is not a hook name of the form blocks.L.hook_attn_out|hook_mlp_out|hook_resid_post";
            return false;
        }
        var layer = int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
        switch (m.Groups[2].Value)
        {
            case "attn_out": site = new Site(layer, SiteKind.AttnOut); break;
            case "mlp_out": site = new Site(layer, SiteKind.MlpOut); break;
            case "resid_post": site = new Site(layer, SiteKind.ResidPost); break;
            default:
                if (layer == 0)
                {
                    error = "'blocks.0.hook_resid_pre' is the embedding output, which carries no hook";
                    return false;
                }
                site = new Site(layer - 1, SiteKind.ResidPost);
                break;
        }
        error = "";
        return true;
    }

    public static Site Parse(string name) =>
        TryParse(name, out var site, out var error) ? site : throw new FormatException(error);

    public override string ToString() => HookName;

    [GeneratedRegex(@"^blocks\.(\d{1,6})\.hook_(attn_out|mlp_out|resid_post|resid_pre)$")]
    private static partial Regex HookPattern();
}
