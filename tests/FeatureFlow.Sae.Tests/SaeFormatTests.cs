using System.IO.Compression;
using System.Text;
using FeatureFlow.Models;
using FeatureFlow.Models.Formats;
using FeatureFlow.Sae.Formats;

namespace FeatureFlow.Sae.Tests;

public sealed class SaeFormatTests : IDisposable
{
    private const int DIn = 3, DSae = 4;
    private readonly string _dir = Directory.CreateTempSubdirectory("featureflow-sae-").FullName;
    private static readonly Site Site2 = new(2, SiteKind.ResidPost);

    public void Dispose() => Directory.Delete(_dir, true);

    /// <summary>W[i, j] = i + 10·j, stored as [d_in, d_sae] (SAELens / Gemma Scope W_enc layout).</summary>
    private static float[] EncoderInputMajor() => Enumerable.Range(0, DIn * DSae).Select(n => (float)(n / DSae + 10 * (n % DSae))).ToArray();
    private static float[] Transpose(float[] m, int rows, int cols)
    {
        var t = new float[m.Length];
        for (var r = 0; r < rows; r++)
            for (var c = 0; c < cols; c++) t[c * rows + r] = m[r * cols + c];
        return t;
    }

    private static float[] DecoderRows() => Enumerable.Range(0, DSae * DIn).Select(n => n * 0.5f).ToArray();
    private static readonly float[] BEnc = [0.5f, -1f, 2f, 0f];
    private static readonly float[] BDec = [1f, 2f, 3f];
    private static readonly float[] Threshold = [100f, 0f, 40f, 1e9f];

    private void WriteSaeLens(string folder, string cfg, Action<SafeTensorsWriter> extra)
    {
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, "cfg.json"), cfg);
        var w = new SafeTensorsWriter()
            .AddFloat32("W_enc", EncoderInputMajor(), DIn, DSae)
            .AddFloat32("W_dec", DecoderRows(), DSae, DIn)
            .AddFloat32("b_enc", BEnc, DSae)
            .AddFloat32("b_dec", BDec, DIn);
        extra(w);
        w.Write(Path.Combine(folder, "sae_weights.safetensors"));
    }

    /// <summary>pre_j = Σ_i W[i, j]·(x_i − b_dec_i·[subtract]) + b_enc_j, from the input-major layout by hand.</summary>
    private static float[] Pre(float[] x, bool subtractBDec)
    {
        var w = EncoderInputMajor();
        return Enumerable.Range(0, DSae).Select(j => Enumerable.Range(0, DIn).Sum(i => w[i * DSae + j] * (x[i] - (subtractBDec ? BDec[i] : 0f))) + BEnc[j]).ToArray();
    }

    [Fact]
    public void SaeLens_jumprelu_with_keys_nested_under_metadata_reads_with_transposed_encoder_and_thresholds()
    {
        var folder = Path.Combine(_dir, "jr");
        WriteSaeLens(folder, """{"architecture": "jumprelu", "d_in": 3, "d_sae": 4, "metadata": {"hook_name": "blocks.2.hook_resid_post", "model_name": "m"}, "apply_b_dec_to_input": true}""",
            w => w.AddFloat32("threshold", Threshold, DSae));
        var sae = SaeLensFormat.Read(folder);
        Assert.Equal(Site2, sae.Site);
        Assert.Equal(SaeActivation.JumpRelu, sae.Activation);
        Assert.Equal([0f, 1f, 2f], sae.EncoderRow(0).ToArray());     // column 0 of [d_in, d_sae]
        Assert.Equal([30f, 31f, 32f], sae.EncoderRow(3).ToArray());
        Assert.Equal(Threshold, sae.Threshold);

        float[] x = [4f, 5f, 6f];
        var pre = Pre(x, subtractBDec: true);
        var z = new float[DSae];
        sae.Encode(x, z, new float[DIn]);
        for (var j = 0; j < DSae; j++) Assert.Equal(pre[j] > Threshold[j] ? pre[j] : 0f, z[j], 4);
    }

    [Fact]
    public void SaeLens_log_threshold_is_exponentiated()
    {
        var folder = Path.Combine(_dir, "log");
        WriteSaeLens(folder, """{"architecture": "jumprelu", "d_in": 3, "d_sae": 4, "hook_name": "blocks.2.hook_resid_post"}""",
            w => w.AddFloat32("log_threshold", [0f, MathF.Log(2f), 1f, -1f], DSae));
        Assert.Equal([1f, 2f, MathF.E, 1f / MathF.E], SaeLensFormat.Read(folder).Threshold.Select(v => MathF.Round(v, 5)).ToArray(), new FloatComparer(1e-4f));
    }

    [Fact]
    public void Topk_written_and_read_back_is_identical()
    {
        var sae = new SparseAutoencoder(DIn, DSae, SaeActivation.TopK, Site2) { K = 2, ModelName = "m" };
        DecoderRows().CopyTo(sae.Decoder, 0);
        Transpose(EncoderInputMajor(), DIn, DSae).CopyTo(sae.Encoder, 0);
        BEnc.CopyTo(sae.EncoderBias, 0);
        BDec.CopyTo(sae.DecoderBias, 0);
        Threshold.CopyTo(sae.Threshold, 0);
        sae.Metadata["held_out_fvu"] = "0.1";
        SaeLensFormat.Write(sae, Path.Combine(_dir, "rt"));
        var back = SaeLensFormat.Read(Path.Combine(_dir, "rt"));
        Assert.Equal((SaeActivation.TopK, 2, Site2, "m"), (back.Activation, back.K, back.Site, back.ModelName));
        Assert.Equal(sae.Encoder, back.Encoder);
        Assert.Equal(sae.Decoder, back.Decoder);
        Assert.Equal(sae.Threshold, back.Threshold);
        Assert.Equal("0.1", back.Metadata["held_out_fvu"]);
    }

    [Fact]
    public void Rewriting_thresholds_changes_only_the_thresholds_file_and_the_metadata()
    {
        var folder = Path.Combine(_dir, "cal");
        WriteSaeLens(folder, """
            {"architecture": "topk", "k": 2, "d_in": 3, "d_sae": 4, "hook_name": "blocks.2.hook_resid_post",
             "extra_key": [1, 2], "metadata": {"trainer": "x", "count": 7}}
            """, _ => { });
        var weights = File.ReadAllBytes(Path.Combine(folder, SaeLensFormat.WeightsFile));
        var sae = SaeLensFormat.Read(folder);
        Threshold.CopyTo(sae.Threshold, 0);
        sae.Metadata["threshold_rule"] = "MaxJaccard";
        SaeLensFormat.WriteThresholds(sae, folder);

        var back = SaeLensFormat.Read(folder);
        Assert.Equal(Threshold, back.Threshold);
        Assert.Equal(("MaxJaccard", "x"), (back.Metadata["threshold_rule"], back.Metadata["trainer"]));
        Assert.Equal(weights, File.ReadAllBytes(Path.Combine(folder, SaeLensFormat.WeightsFile)));
        var cfgText = File.ReadAllText(Path.Combine(folder, SaeLensFormat.ConfigFile));
        var cfg = System.Text.Json.Nodes.JsonNode.Parse(cfgText)!;
        Assert.Equal("[1,2]", cfg["extra_key"]!.ToJsonString());
        Assert.Equal(7, cfg["metadata"]!["count"]!.GetValue<int>());
    }

    private static byte[] NpyBytes(float[] values, params long[] shape)
    {
        var header = $"{{'descr': '<f4', 'fortran_order': False, 'shape': ({string.Join(", ", shape)}{(shape.Length == 1 ? "," : "")}), }}";
        var total = 10 + header.Length + 1;
        header = header.PadRight(header.Length + (64 - total % 64) % 64) + "\n";
        using var ms = new MemoryStream();
        ms.Write([0x93, .. "NUMPY"u8, 1, 0]);
        ms.Write(BitConverter.GetBytes((ushort)header.Length));
        ms.Write(Encoding.ASCII.GetBytes(header));
        ms.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()));
        return ms.ToArray();
    }

    [Fact]
    public void Gemma_scope_npz_reads_without_b_dec_subtraction()
    {
        var path = Path.Combine(_dir, "params.npz");
        using (var zip = ZipFile.Open(path, ZipArchiveMode.Create))
        {
            void Add(string name, byte[] bytes)
            {
                using var s = zip.CreateEntry(name + ".npy").Open();
                s.Write(bytes);
            }
            Add("W_enc", NpyBytes(EncoderInputMajor(), DIn, DSae));
            Add("W_dec", NpyBytes(DecoderRows(), DSae, DIn));
            Add("b_enc", NpyBytes(BEnc, DSae));
            Add("b_dec", NpyBytes(BDec, DIn));
            Add("threshold", NpyBytes(Threshold, DSae));
        }
        var sae = SaeImport.Read(SaeSourceFormat.GemmaScope, _dir, Site2, "gemma");
        Assert.False(sae.ApplyDecoderBiasToInput);
        float[] x = [4f, 5f, 6f];
        var pre = Pre(x, subtractBDec: false);
        var z = new float[DSae];
        sae.Encode(x, z, new float[DIn]);
        for (var j = 0; j < DSae; j++) Assert.Equal(pre[j] > Threshold[j] ? pre[j] : 0f, z[j], 4);
        Assert.Equal(DecoderRows(), sae.Decoder);
    }

    [Theory]
    [InlineData("gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71", "blocks.20.hook_resid_post")]
    [InlineData("gemma-scope-2b-pt-res-canonical/layer_0/width_16k/canonical/params.npz", "blocks.0.hook_resid_post")]
    [InlineData("gemma-scope-9b-it-mlp/layer_9/width_131k/average_l0_12", "blocks.9.hook_mlp_out")]
    public void Gemma_scope_release_paths_name_the_site_they_read(string path, string site)
    {
        Assert.Equal(Site.Parse(site), SaeImport.GemmaScopeSite(Path.Combine(_dir, path), null));
        Assert.Equal(Site.Parse(site), SaeImport.GemmaScopeSite(Path.Combine(_dir, path), Site.Parse(site)));
    }

    [Fact]
    public void Gemma_scope_paths_refuse_attention_saes_a_disagreeing_site_and_a_missing_site()
    {
        var att = Assert.Throws<InvalidDataException>(() =>
            SaeImport.GemmaScopeSite(Path.Combine(_dir, "gemma-scope-2b-pt-att/layer_3/width_16k/x"), null));
        Assert.Contains("hook_z", att.Message);
        var clash = Assert.Throws<ArgumentException>(() =>
            SaeImport.GemmaScopeSite(Path.Combine(_dir, "gemma-scope-2b-pt-res/layer_3/width_16k/x"), Site2));
        Assert.Contains("blocks.3.hook_resid_post", clash.Message);
        Assert.Contains("blocks.2.hook_resid_post", clash.Message);
        var none = Assert.Throws<ArgumentException>(() => SaeImport.GemmaScopeSite(_dir, null));
        Assert.Contains("give the site", none.Message);
        Assert.Equal(Site2, SaeImport.GemmaScopeSite(_dir, Site2));
    }

    [Fact]
    public void An_sae_at_a_site_the_hooked_graph_does_not_carry_is_refused()
    {
        var sae = new SparseAutoencoder(DIn, DSae, SaeActivation.Relu, Site2);
        var arch = new ModelArchitecture { Family = "t", DModel = DIn, HiddenDim = 8, Layers = 5, Heads = 1, KvHeads = 1, VocabSize = 10, ContextLength = 8 };
        SaeSet.Check(sae, arch, "f", [Site2]);
        var e = Assert.Throws<InvalidDataException>(() => SaeSet.Check(sae, arch, "f", [new Site(2, SiteKind.MlpOut)]));
        Assert.Contains("not one of the model's hooked sites", e.Message);
    }

    [Fact]
    public void Sparsify_reads_encoder_rows_as_stored_subtracts_b_dec_and_keeps_top_k()
    {
        var folder = Path.Combine(_dir, "layers.2");
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, "cfg.json"), """{"d_in": 3, "k": 2, "num_latents": 4}""");
        var encoderRows = Transpose(EncoderInputMajor(), DIn, DSae); // [num_latents, d_in]
        new SafeTensorsWriter()
            .AddFloat32("encoder.weight", encoderRows, DSae, DIn)
            .AddFloat32("encoder.bias", BEnc, DSae)
            .AddFloat32("W_dec", DecoderRows(), DSae, DIn)
            .AddFloat32("b_dec", BDec, DIn)
            .Write(Path.Combine(folder, "sae.safetensors"));
        var sae = SaeImport.Read(SaeSourceFormat.Sparsify, folder, Site2, "m");
        float[] x = [4f, 5f, 6f];
        var pre = Pre(x, subtractBDec: true);
        var z = new float[DSae];
        sae.Encode(x, z, new float[DIn]);
        var top = pre.Select((v, j) => (v, j)).OrderByDescending(p => p.v).Take(2).Select(p => p.j).ToHashSet();
        for (var j = 0; j < DSae; j++) Assert.Equal(top.Contains(j) && pre[j] > 0 ? pre[j] : 0f, z[j], 4);
    }

    [Fact]
    public void A_tensor_of_the_wrong_shape_names_the_file_and_the_tensor()
    {
        var folder = Path.Combine(_dir, "bad");
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, "cfg.json"), """{"architecture": "standard", "d_in": 3, "d_sae": 4, "hook_name": "blocks.2.hook_resid_post"}""");
        new SafeTensorsWriter().AddFloat32("W_enc", new float[12], DSae, DIn).Write(Path.Combine(folder, "sae_weights.safetensors"));
        var e = Assert.Throws<InvalidDataException>(() => SaeLensFormat.Read(folder));
        Assert.Contains("sae_weights.safetensors", e.Message);
        Assert.Contains("'W_enc'", e.Message);
    }

    [Theory]
    [InlineData("""{"architecture": "gated", "d_in": 3, "d_sae": 4, "hook_name": "blocks.2.hook_resid_post"}""", "architecture")]
    [InlineData("""{"architecture": "standard", "d_sae": 4, "hook_name": "blocks.2.hook_resid_post"}""", "d_in")]
    [InlineData("""{"architecture": "standard", "d_in": 3, "d_sae": 4, "hook_name": "blocks.2.hook_resid_mid"}""", "hook_name")]
    [InlineData("""{ not json""", "malformed")]
    public void Malformed_configs_name_what_is_wrong(string cfg, string expected)
    {
        var folder = Path.Combine(_dir, "cfg");
        WriteSaeLens(folder, cfg, _ => { });
        var e = Assert.Throws<InvalidDataException>(() => SaeLensFormat.Read(folder));
        Assert.Contains(expected, e.Message);
        Assert.Contains("cfg.json", e.Message);
    }

    [Fact]
    public void An_sae_for_another_d_model_is_refused()
    {
        var sae = new SparseAutoencoder(DIn, DSae, SaeActivation.Relu, Site2);
        var arch = new ModelArchitecture { Family = "t", DModel = 64, HiddenDim = 8, Layers = 5, Heads = 8, KvHeads = 4, VocabSize = 10, ContextLength = 8 };
        var e = Assert.Throws<InvalidDataException>(() => SaeSet.Check(sae, arch, "some/folder"));
        Assert.Contains("d_in 3", e.Message);
        Assert.Contains("some/folder", e.Message);
    }

    [Fact]
    public void A_set_load_can_refuse_a_bad_folder_and_keep_the_others()
    {
        var arch = new ModelArchitecture { Family = "t", DModel = DIn, HiddenDim = 8, Layers = 5, Heads = 1, KvHeads = 1, VocabSize = 10, ContextLength = 8 };
        WriteSaeLens(Path.Combine(_dir, "set", "good"), """{"architecture": "standard", "d_in": 3, "d_sae": 4, "hook_name": "blocks.2.hook_resid_post"}""", _ => { });
        Directory.CreateDirectory(Path.Combine(_dir, "set", "bad"));
        File.WriteAllText(Path.Combine(_dir, "set", "bad", "cfg.json"), "{ not json");
        var refused = new List<(string Path, string Reason)>();
        var set = SaeSet.Load(Path.Combine(_dir, "set"), arch, refused);
        Assert.Equal([Site2], set.BySite.Keys);
        var (path, reason) = Assert.Single(refused);
        Assert.EndsWith("bad", path);
        Assert.Contains("malformed", reason);
        Assert.Throws<InvalidDataException>(() => SaeSet.Load(Path.Combine(_dir, "set"), arch));
    }

    [Fact]
    public void Hook_feature_folds_b_dec_into_the_bias()
    {
        var folder = Path.Combine(_dir, "fold");
        WriteSaeLens(folder, """{"architecture": "jumprelu", "d_in": 3, "d_sae": 4, "hook_name": "blocks.2.hook_resid_post", "apply_b_dec_to_input": true}""",
            w => w.AddFloat32("threshold", Threshold, DSae));
        var sae = SaeLensFormat.Read(folder);
        float[] x = [4f, 5f, 6f];
        var z = new float[DSae];
        sae.Encode(x, z, new float[DIn]);
        for (var j = 0; j < DSae; j++)
        {
            var (_, e, b, theta) = sae.HookFeature(j);
            var pre = e.Zip(x, (a, c) => a * c).Sum() + b;
            Assert.Equal(z[j], pre > theta ? pre : 0f, 3);
        }
    }

    private sealed class FloatComparer(float tolerance) : IEqualityComparer<float>
    {
        public bool Equals(float a, float b) => Math.Abs(a - b) <= tolerance;
        public int GetHashCode(float v) => 0;
    }
}
