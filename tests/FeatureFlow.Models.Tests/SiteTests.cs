namespace FeatureFlow.Models.Tests;

public class SiteTests
{
    [Theory]
    [InlineData("blocks.0.hook_attn_out", 0, SiteKind.AttnOut)]
    [InlineData("blocks.3.hook_mlp_out", 3, SiteKind.MlpOut)]
    [InlineData("blocks.4.hook_resid_post", 4, SiteKind.ResidPost)]
    public void Hook_names_round_trip(string name, int layer, SiteKind kind)
    {
        var site = Site.Parse(name);
        Assert.Equal(new Site(layer, kind), site);
        Assert.Equal(name, site.HookName);
    }

    [Fact]
    public void Resid_pre_of_block_L_is_resid_post_of_block_L_minus_1() =>
        Assert.Equal(new Site(1, SiteKind.ResidPost), Site.Parse("blocks.2.hook_resid_pre"));

    [Theory]
    [InlineData("blocks.0.hook_resid_pre")]
    [InlineData("blocks.x.hook_mlp_out")]
    [InlineData("blocks.1.hook_resid_mid")]
    [InlineData("hook_mlp_out")]
    [InlineData("")]
    public void Malformed_or_unhooked_names_are_rejected(string name)
    {
        Assert.False(Site.TryParse(name, out _, out var error));
        Assert.NotEmpty(error);
    }

    [Fact]
    public void Index_is_block_major_and_inverts()
    {
        var all = Site.All(5).ToArray();
        Assert.Equal(15, all.Length);
        for (var i = 0; i < all.Length; i++)
        {
            Assert.Equal(i, all[i].Index);
            Assert.Equal(all[i], Site.FromIndex(i));
        }
        Assert.Equal(new Site(1, SiteKind.AttnOut), all[3]);
    }
}
