using System.Diagnostics;
using System.Globalization;
using FeatureFlow.Engine;
using FeatureFlow.Onnx;
using Microsoft.ML.OnnxRuntime;
using DataType = FeatureFlow.Onnx.Ir.TensorProto.Types.DataType;

namespace FeatureFlow.Flow;

public sealed record FlowBenchmarkResult(int Features, int DModel, int BlockRows, string Provider, double MatchSeconds, double MatMulSeconds)
{
    /// <summary>2·n²·d: the multiply-adds of the full product, the work both variants do.</summary>
    public double Flops => 2.0 * Features * (double)Features * DModel;

    public string ToMarkdown() => string.Create(CultureInfo.InvariantCulture, $"""
        | run | shape | time (s) | GFLOP/s |
        |---|---|---:|---:|
        | flow-map match (normalise, blocked MatMul + max/arg-max both ways, {BlockRows}-row blocks) | {Features} × {DModel} vs {Features} × {DModel} | {MatchSeconds:F2} | {Flops / MatchSeconds / 1e9:F1} |
        | plain ONNX Runtime MatMul [{Features}, {DModel}] × [{DModel}, {Features}] | same | {MatMulSeconds:F2} | {Flops / MatMulSeconds / 1e9:F1} |
        | ratio (match / MatMul time) | | {MatchSeconds / MatMulSeconds:F2} | |

        Execution provider: {Provider}.
        """);
}

/// <summary>The flow-map matcher against a plain MatMul of the same size, measured in one run on one provider.</summary>
public static class FlowBenchmark
{
    public static FlowBenchmarkResult Run(int features, int dModel, int blockRows, EngineOptions options)
    {
        var rng = new Random(7);
        float[] Random(int n) => Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var a = Random(features * dModel);
        var b = Random(features * dModel);

        using var matcher = new CosineMatcher(options, blockRows);
        matcher.Match(a.AsSpan(0, Math.Min(blockRows, features) * dModel), b.AsSpan(0, dModel * 8), dModel); // warm-up
        var clock = Stopwatch.StartNew();
        matcher.Match(a, b, dModel);
        var match = clock.Elapsed.TotalSeconds;

        var g = new GraphBuilder("matmul");
        var x = g.Input("a", DataType.Float, "m", "d");
        var y = g.Input("bt", DataType.Float, "d", "n");
        g.Output(g.Op("MatMul", [x, y]), "s", DataType.Float, "m", "n");
        var (session, _) = SessionFactory.Create(OnnxModelFile.Serialize(g.Build(new OnnxModelOptions())), options);
        using (session)
        {
            var bt = Models.Matrix.Transpose(b, features, dModel);
            using var av = OrtValue.CreateTensorValueFromMemory(a, [features, dModel]);
            using var bv = OrtValue.CreateTensorValueFromMemory(bt, [dModel, features]);
            using var run = new RunOptions();
            clock.Restart();
            using var outputs = session.Run(run, ["a", "bt"], [av, bv], ["s"]);
            var matmul = clock.Elapsed.TotalSeconds;
            return new FlowBenchmarkResult(features, dModel, blockRows, matcher.Provider.Name, match, matmul);
        }
    }
}
