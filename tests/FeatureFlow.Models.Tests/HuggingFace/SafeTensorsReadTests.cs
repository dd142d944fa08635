using FeatureFlow.Models.Formats;

namespace FeatureFlow.Models.Tests.HuggingFace;

/// <summary>
/// The one safetensors reader serves whole-file reads (SAE, pack, corpus files) and lazy per-tensor reads
/// (checkpoint shards); a tensor larger than one read piece (4 MiB) comes back whole either way.
/// </summary>
public class SafeTensorsReadTests : IDisposable
{
    private const int Count = 3_000_001; // 12 MB as F32, 6 MB as F16: pieces end inside the tensor
    private readonly TempFolder _temp = new();

    [Fact]
    public void Tensors_past_one_read_piece_read_the_same_whole_and_lazily()
    {
        var values = Numerics.RandomVector(new Random(7), Count, 3f);
        var path = _temp.Sub("big.safetensors");
        new SafeTensorsWriter().AddFloat32("f32", values, Count).AddFloat16("f16", values, Count)
            .AddInt32("ids", Enumerable.Range(-5, Count).ToArray(), Count).Write(path);
        var asHalf = values.Select(v => (float)(Half)v).ToArray();

        var whole = SafeTensorsFile.Read(path);
        using var lazy = SafeTensorsFile.Open(path);
        foreach (var file in new[] { whole, lazy })
        {
            Assert.Equal(values, file.GetFloat32("f32"));
            Assert.Equal(asHalf, file.GetFloat32("f16"));
            Assert.Equal(Enumerable.Range(-5, Count), file.GetInt32("ids"));
        }
    }

    [Fact]
    public void A_file_cut_short_names_the_tensor_that_does_not_fit()
    {
        var path = _temp.Sub("cut.safetensors");
        var bytes = new SafeTensorsWriter().AddFloat32("a", [1f, 2f], 2).AddFloat32("b", [3f, 4f], 2).ToBytes();
        File.WriteAllBytes(path, bytes[..^4]);
        foreach (var read in new Func<string, SafeTensorsFile>[] { SafeTensorsFile.Read, SafeTensorsFile.Open })
        {
            var e = Assert.Throws<InvalidDataException>(() => read(path));
            Assert.Contains(path, e.Message);
            Assert.Contains("tensor 'b' has offsets [8, 16) that do not fit the file's 12 data bytes", e.Message);
        }
    }

    public void Dispose() => _temp.Dispose();
}
