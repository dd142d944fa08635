using FeatureFlow.Engine;
using FeatureFlow.Onnx;
using FeatureFlow.Onnx.Ir;
using Microsoft.ML.OnnxRuntime;
using DataType = FeatureFlow.Onnx.Ir.TensorProto.Types.DataType;

namespace FeatureFlow.Flow;

/// <summary>Best match (index, cosine) of each row of one decoder set among the rows of another.</summary>
public sealed record Matches(int[] Index, float[] Score);

/// <summary>
/// Top-1 cosine matching of decoder rows, in both directions at once, on ONNX Runtime (so the CUDA
/// provider accelerates it where present): S = Â·B̂ᵀ for unit-normalised rows, then arg-max over
/// rows and over columns. Targets are processed in blocks of rows, so 16k × 16k pairs never need
/// the whole product in memory. Ties go to the lower index.
/// </summary>
public sealed class CosineMatcher : IDisposable
{
    private readonly InferenceSession _session;

    public CosineMatcher(EngineOptions options, int blockRows = 2048)
    {
        BlockRows = blockRows;
        (_session, Provider) = SessionFactory.Create(OnnxModelFile.Serialize(Graph()), options);
    }

    public int BlockRows { get; }
    public ExecutionProviderInfo Provider { get; }

    /// <summary>The graph: S = A·Bᵀ → per-row and per-column max and arg-max.</summary>
    public static ModelProto Graph()
    {
        var g = new GraphBuilder("cosine_match");
        var a = g.Input("a", DataType.Float, "m", "d");
        var b = g.Input("b", DataType.Float, "n", "d");
        var s = g.Op("MatMul", [a, g.Op("Transpose", [b], Attr.Ints("perm", 1, 0))]);
        g.Output(g.Op("ReduceMax", [s], Attr.Ints("axes", 1), Attr.Int("keepdims", 0)), "row_score", DataType.Float, "m");
        g.Output(g.Op("ArgMax", [s], Attr.Int("axis", 1), Attr.Int("keepdims", 0)), "row_index", DataType.Int64, "m");
        g.Output(g.Op("ReduceMax", [s], Attr.Ints("axes", 0), Attr.Int("keepdims", 0)), "col_score", DataType.Float, "n");
        g.Output(g.Op("ArgMax", [s], Attr.Int("axis", 0), Attr.Int("keepdims", 0)), "col_index", DataType.Int64, "n");
        return g.Build(new OnnxModelOptions());
    }

    /// <summary>
    /// For decoders <paramref name="targets"/> [m, d] and <paramref name="sources"/> [n, d] (any row norms):
    /// Backward = each target's best source; Forward = each source's best target.
    /// </summary>
    public (Matches Backward, Matches Forward) Match(ReadOnlySpan<float> targets, ReadOnlySpan<float> sources, int d)
    {
        int m = targets.Length / d, n = sources.Length / d;
        var a = Normalise(targets, d);
        var b = Normalise(sources, d);
        var backward = new Matches(new int[m], new float[m]);
        var forward = new Matches(new int[n], Enumerable.Repeat(float.NegativeInfinity, n).ToArray());
        using var bValue = OrtValue.CreateTensorValueFromMemory(b, [n, d]);
        using var runOptions = new RunOptions();
        for (var start = 0; start < m; start += BlockRows)
        {
            var rows = Math.Min(BlockRows, m - start);
            using var aValue = OrtValue.CreateTensorValueFromMemory(OrtMemoryInfo.DefaultInstance, new Memory<float>(a, start * d, rows * d), [rows, d]);
            using var outputs = _session.Run(runOptions, ["a", "b"], [aValue, bValue], ["row_score", "row_index", "col_score", "col_index"]);
            outputs[0].GetTensorDataAsSpan<float>().CopyTo(backward.Score.AsSpan(start));
            var rowIndex = outputs[1].GetTensorDataAsSpan<long>();
            for (var i = 0; i < rows; i++) backward.Index[start + i] = (int)rowIndex[i];
            var colScore = outputs[2].GetTensorDataAsSpan<float>();
            var colIndex = outputs[3].GetTensorDataAsSpan<long>();
            for (var j = 0; j < n; j++)
                if (colScore[j] > forward.Score[j]) // strict: an earlier block keeps a tie
                {
                    forward.Score[j] = colScore[j];
                    forward.Index[j] = start + (int)colIndex[j];
                }
        }
        return (backward, forward);
    }

    /// <summary>Unit-norm rows; an all-zero row (a dead feature's decoder) stays zero and matches with cosine 0.</summary>
    public static float[] Normalise(ReadOnlySpan<float> rows, int d)
    {
        var result = rows.ToArray();
        for (var r = 0; r < result.Length / d; r++)
        {
            var row = result.AsSpan(r * d, d);
            var norm = System.Numerics.Tensors.TensorPrimitives.Norm(row);
            if (norm > 0f) System.Numerics.Tensors.TensorPrimitives.Multiply(row, 1f / norm, row);
        }
        return result;
    }

    public void Dispose() => _session.Dispose();
}
