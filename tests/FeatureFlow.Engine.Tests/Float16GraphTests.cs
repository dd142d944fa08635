using FeatureFlow.Models;
using FeatureFlow.Models.Export;
using FeatureFlow.Models.Folder;
using FeatureFlow.Models.Llama2c;
using FeatureFlow.Onnx;
using FeatureFlow.Steering;

namespace FeatureFlow.Engine.Tests;

/// <summary>
/// <see cref="Float16Converter"/> on the fused-operator hooked graph: float16 weights and math inside, float32 at the
/// boundary, so the same runner drives it; its logits stay within half precision of the float32 graph's, steered or not.
/// </summary>
public sealed class Float16GraphTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("featureflow-float16-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void The_float16_fused_graph_stays_within_half_precision_of_float32_steered_or_not()
    {
        var folder = ModelFolder.Open(RepoPaths.Stories260kModel);
        var checkpoint = Llama2cCheckpoint.Read(Path.Combine(folder.Directory, "stories260K.bin"));
        var arch = checkpoint.Architecture;
        var options = new HookedGraphOptions { Operators = OperatorSet.Fused };
        var graph = LlamaGraphExporter.Export(arch, checkpoint.Weights, options, "stories260k");
        var half = Float16Converter.Convert(graph);
        Assert.DoesNotContain(half.Graph.Initializer, t => t.DataType == (int)Onnx.Ir.TensorProto.Types.DataType.Float);
        Assert.True(OnnxModelFile.Serialize(half).Length < 0.6 * OnnxModelFile.Serialize(graph).Length,
            "float16 weights should take about half the bytes");
        var (singlePath, halfPath) = (Path.Combine(_dir, "fp32.onnx"), Path.Combine(_dir, "fp16.onnx"));
        OnnxModelFile.Write(graph, singlePath);
        OnnxModelFile.Write(half, halfPath);
        var cpu = new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu };
        using var single = new HookedDecoder(singlePath, arch, cpu);
        using var halved = new HookedDecoder(halfPath, arch, cpu);

        var steered = new SteeringTensors(single.SteeringShape!);
        Numerics.RandomVector(new Random(3), arch.DModel, 1f).CopyTo(steered.AddAt(new Site(2, SiteKind.ResidPost)));
        foreach (var steering in new[] { new SteeringTensors(single.SteeringShape!), steered })
        {
            using var bound32 = single.Bind(steering);
            using var bound16 = halved.Bind(steering);
            using var state32 = single.NewState();
            using var state16 = halved.NewState();
            int[] tokens = [1, 403, 407, 261, 378];
            for (var step = 0; step < 6; step++)
            {
                var expected = single.Forward(state32, tokens, bound32);
                var actual = halved.Forward(state16, tokens, bound16);
                var error = Numerics.RelativeL2(actual, expected);
                Assert.True(error < 1e-2, $"step {step}: float16 logits off float32 by relative L2 {error}");
                Assert.True(error > 0, "the float16 graph should round somewhere");
                var vocab = arch.VocabSize;
                var last = expected.AsSpan((tokens.Length - 1) * vocab, vocab).ToArray();
                tokens = [Array.IndexOf(last, last.Max())];
            }
        }
    }
}
