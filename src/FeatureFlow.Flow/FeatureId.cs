using System.Globalization;
using System.Text.RegularExpressions;
using FeatureFlow.Models;

namespace FeatureFlow.Flow;

/// <summary>A feature of the SAE at a site. Parses <c>blocks.3.hook_resid_post/17</c> and the paper's <c>3/res/17</c> (<c>res|mlp|att</c>).</summary>
public readonly partial record struct FeatureId(Site Site, int Index)
{
    public override string ToString() => $"{Site.HookName}/{Index}";

    /// <summary>The paper's short form, e.g. <c>3/res/17</c>.</summary>
    public string Short => $"{Site.Layer}/{Site.Kind switch { SiteKind.ResidPost => "res", SiteKind.MlpOut => "mlp", _ => "att" }}/{Index}";

    public static FeatureId Parse(string text)
    {
        var paper = PaperPattern().Match(text);
        if (paper.Success)
        {
            var kind = paper.Groups[2].Value switch { "res" => SiteKind.ResidPost, "mlp" => SiteKind.MlpOut, _ => SiteKind.AttnOut };
            return new FeatureId(new Site(int.Parse(paper.Groups[1].Value, CultureInfo.InvariantCulture), kind), int.Parse(paper.Groups[3].Value, CultureInfo.InvariantCulture));
        }
        var slash = text.LastIndexOf('/');
        if (slash > 0 && Site.TryParse(text[..slash], out var site, out _) && int.TryParse(text[(slash + 1)..], NumberStyles.None, CultureInfo.InvariantCulture, out var index))
            return new FeatureId(site, index);
        throw new FormatException($"'{text}' is not a feature: use blocks.L.hook_resid_post/N or L/res/N (res, mlp, att)");
    }

    [GeneratedRegex(@"^(\d{1,6})/(res|mlp|att)/(\d{1,9})$")]
    private static partial Regex PaperPattern();
}
