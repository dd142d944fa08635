using FeatureFlow.Onnx.Ir;
using Microsoft.ML.OnnxRuntime;
using DataType = FeatureFlow.Onnx.Ir.TensorProto.Types.DataType;

namespace FeatureFlow.Onnx.Tests;

public class GraphBuilderTests
{
    /// <summary>y = x·W + b with a scoped name, written by the builder and run by ONNX Runtime.</summary>
    private static ModelProto Affine(float[] w, float[] b)
    {
        var g = new GraphBuilder("affine");
        var x = g.Input("x", DataType.Float, "batch", 2);
        using (g.Scope("layer"))
        {
            var y = g.Op("Add", [g.Op("MatMul", [x, g.Initializer("W", w, 2, 3)]), g.Initializer("b", b, 3)]);
            g.Output(y, "y", DataType.Float, "batch", 3);
        }
        return g.Build(new OnnxModelOptions());
    }

    [Fact]
    public void Built_graph_runs_in_onnx_runtime_with_the_expected_values()
    {
        float[] w = [1, 2, 3, 4, 5, 6], b = [0.5f, -1, 2];
        using var session = new InferenceSession(OnnxModelFile.Serialize(Affine(w, b)));
        float[] x = [1, -2, 3, 0.5f];
        using var input = OrtValue.CreateTensorValueFromMemory(x, [2, 2]);
        using var outputs = session.Run(new RunOptions(), ["x"], [input], ["y"]);
        var y = outputs[0].GetTensorDataAsSpan<float>().ToArray();
        // Row r: Σ_i x[r,i]·W[i,c] + b[c].
        float[] expected = [1 * 1 - 2 * 4 + 0.5f, 1 * 2 - 2 * 5 - 1, 1 * 3 - 2 * 6 + 2, 3 * 1 + 0.5f * 4 + 0.5f, 3 * 2 + 0.5f * 5 - 1, 3 * 3 + 0.5f * 6 + 2];
        Assert.Equal(expected, y);
    }

    [Fact]
    public void Same_build_gives_identical_bytes()
    {
        var a = OnnxModelFile.Serialize(Affine([1, 2, 3, 4, 5, 6], [0, 0, 0]));
        var b = OnnxModelFile.Serialize(Affine([1, 2, 3, 4, 5, 6], [0, 0, 0]));
        Assert.Equal(a, b);
    }

    [Fact]
    public void Generated_names_carry_the_scope()
    {
        var model = Affine([1, 2, 3, 4, 5, 6], [0, 0, 0]);
        Assert.Contains(model.Graph.Node, n => n.OpType == "MatMul" && n.Output[0] == "layer/MatMul");
        Assert.Equal("y", model.Graph.Output.Single().Name);
    }

    [Fact]
    public void Defining_a_value_twice_is_an_error()
    {
        var g = new GraphBuilder("dup");
        g.Input("x", DataType.Float, 1);
        var e = Assert.Throws<InvalidOperationException>(() => g.Initializer("x", [1f], 1));
        Assert.Contains("'x'", e.Message);
    }

    [Fact]
    public void Initializer_with_wrong_element_count_is_rejected()
    {
        var g = new GraphBuilder("bad");
        var e = Assert.Throws<ArgumentException>(() => g.Initializer("w", [1f, 2f, 3f], 2, 2));
        Assert.Contains("'w'", e.Message);
    }

    [Fact]
    public void Reading_a_file_that_is_not_onnx_names_the_file()
    {
        var path = Path.GetTempFileName();
        File.WriteAllBytes(path, [0xFF, 0xFF, 0xFF, 0xFF, 0x0F]);
        var e = Assert.Throws<InvalidDataException>(() => OnnxModelFile.Read(path));
        Assert.Contains(path, e.Message);
        File.Delete(path);
    }

    [Fact]
    public void Written_file_reads_back_equal()
    {
        var model = Affine([1, 2, 3, 4, 5, 6], [1, 2, 3]);
        var path = Path.GetTempFileName();
        OnnxModelFile.Write(model, path);
        Assert.Equal(model, OnnxModelFile.Read(path));
        File.Delete(path);
    }
}
