using FeatureFlow.Models.Folder;
using FeatureFlow.Models.Hooking;
using FeatureFlow.Onnx;

namespace FeatureFlow.Models.Tests.Hooking;

public sealed class ExternalDataTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("featureflow-hook-external-").FullName;

    public void Dispose() => Directory.Delete(_root, true);

    [Fact]
    public void A_graph_with_external_weights_is_hooked_with_the_weights_left_external_and_gives_the_same_logits()
    {
        var source = Path.Combine(_root, "source");
        Directory.CreateDirectory(source);
        foreach (var file in new[] { "tokenizer.json", "config.json" })
            File.Copy(Path.Combine(RepoPaths.TorchTinyGpt2, file), Path.Combine(source, file));
        var model = OnnxModelFile.Read(Path.Combine(RepoPaths.TorchTinyGpt2, "model.onnx"));
        ExternalData.Externalize(model, source, "model.onnx.data");
        OnnxModelFile.Write(model, Path.Combine(source, "model.onnx"));
        Assert.Contains(model.Graph.Initializer, ExternalData.IsExternal);

        var output = Path.Combine(_root, "hooked");
        var manifest = HookedFolderWriter.Write(new HookRequest { InputGraph = Path.Combine(source, "model.onnx"), OutputDirectory = output });
        var folder = ModelFolder.Open(output);
        Assert.Contains("model.onnx.data", manifest.Files.Keys);
        var hooked = OnnxModelFile.Read(folder.HookedGraphPath);
        var table = hooked.Graph.Initializer.Single(t => t.Name == "m.transformer.wte.weight");
        Assert.True(ExternalData.IsExternal(table), "the token table was inlined");
        Assert.Equal("model.onnx.data", ExternalData.Reference(table).Location);
        Assert.True(new FileInfo(folder.HookedGraphPath).Length < 200_000, "the hooked graph carries the weights itself");

        var fixtureIo = DecoderIoDetector.Detect(OnnxModelFile.Read(Path.Combine(RepoPaths.TorchTinyGpt2, "model.onnx")).Graph);
        using var original = new DecoderGraphRunner(Path.Combine(RepoPaths.TorchTinyGpt2, "model.onnx"), fixtureIo, 2, 1, 2);
        using var external = new DecoderGraphRunner(folder.HookedGraphPath, manifest.Hooking!.Io, 2, 1, 2);
        foreach (var tokens in new[] { new[] { 464, 2068, 7586, 21831 }, [318] })
        {
            var expected = original.Step(tokens);
            var actual = external.Step(tokens);
            Assert.True(expected.Zip(actual, (e, a) => Math.Abs(e - a)).Max() <= 1e-6);
        }
    }

    [Fact]
    public void External_data_that_would_leave_the_model_folder_is_refused()
    {
        var model = OnnxModelFile.Read(Path.Combine(RepoPaths.TorchTinyGpt2, "model.onnx"));
        ExternalData.Externalize(model, _root, "weights.bin");
        var tensor = model.Graph.Initializer.First(ExternalData.IsExternal);
        tensor.ExternalData.Single(e => e.Key == "location").Value = "../weights.bin";
        var e = Assert.Throws<InvalidDataException>(() => ExternalData.Files(model));
        Assert.Contains("'../weights.bin' is outside the model's folder", e.Message);
    }
}
