using FeatureFlow.Onnx;
using FeatureFlow.Onnx.Ir;
using DataType = FeatureFlow.Onnx.Ir.TensorProto.Types.DataType;

namespace FeatureFlow.Models.Tests.Hooking;

public class GraphEditorTests
{
    /// <summary>x → Relu → Neg → y, with the builder's generated names.</summary>
    private static (GraphEditor Editor, string Relu, string Neg) Chain()
    {
        var g = new GraphBuilder("chain");
        var x = g.Input("x", DataType.Float, 3);
        var relu = g.Op("Relu", [x]);
        var neg = g.Op("Neg", [relu]);
        g.Output(neg, "y", DataType.Float, 3);
        return (new GraphEditor(g.Build(new OnnxModelOptions()).Graph), relu, neg);
    }

    [Fact]
    public void Spliced_nodes_are_sorted_before_their_readers_and_untouched_nodes_keep_their_order()
    {
        var (editor, relu, _) = Chain();
        var before = editor.Graph.Node.Select(n => n.Name).ToArray();
        var readers = editor.Consumers(relu).ToArray();
        editor.AddNode("", "Abs", "inserted", [relu], ["abs_out"]);
        editor.Redirect(relu, "abs_out", readers);
        Assert.Equal("inserted", editor.Graph.Node[^1].Name);
        editor.SortTopologically();
        Assert.Equal([before[0], "inserted", .. before[1..]], editor.Graph.Node.Select(n => n.Name));
        Assert.Equal("abs_out", editor.Graph.Node.Single(n => n.OpType == "Neg").Input[0]);
        Assert.Equal(editor.Graph.Node.Single(n => n.Name == "inserted"), editor.Producer("abs_out"));
    }

    [Fact]
    public void A_cycle_is_refused_naming_a_node_on_it()
    {
        var (editor, _, neg) = Chain();
        editor.Redirect("x", neg, editor.Consumers("x").ToArray());
        var e = Assert.Throws<InvalidDataException>(editor.SortTopologically);
        Assert.Contains("cycle", e.Message);
        Assert.Contains("Relu", e.Message);
    }

    [Fact]
    public void Merging_refuses_a_value_or_node_name_the_graph_already_has()
    {
        var (editor, relu, _) = Chain();
        var e = Assert.Throws<InvalidDataException>(() => editor.AddNode("", "Abs", "fresh", ["x"], [relu]));
        Assert.Contains($"already has a value named '{relu}'", e.Message);
        var node = editor.Graph.Node[0].Name;
        e = Assert.Throws<InvalidDataException>(() => editor.AddNode("", "Abs", node, ["x"], ["fresh"]));
        Assert.Contains($"already has a node named '{node}'", e.Message);
    }

    [Fact]
    public void Unique_prefixes_avoid_every_name_in_use_and_its_scopes()
    {
        var (editor, _, _) = Chain();
        editor.AddNode("", "Abs", "featureflow/existing", ["x"], ["featureflow_1"]);
        Assert.Equal("featureflow_2", editor.UniquePrefix("featureflow"));
        Assert.Equal("fresh", editor.UniquePrefix("fresh"));
    }

    [Fact]
    public void External_data_round_trips_bytes_and_leaves_small_tensors_inside_the_model()
    {
        var dir = Directory.CreateTempSubdirectory("featureflow-external-").FullName;
        try
        {
            var g = new GraphBuilder("weights");
            var big = Enumerable.Range(0, 600).Select(i => i * 0.5f).ToArray();
            g.Initializer("big", big, 600);
            g.Initializer("small", [1f, 2f], 2);
            var model = g.Build(new OnnxModelOptions());
            ExternalData.Externalize(model, dir, "weights.bin");
            var tensors = model.Graph.Initializer.ToDictionary(t => t.Name);
            Assert.True(ExternalData.IsExternal(tensors["big"]));
            Assert.False(ExternalData.IsExternal(tensors["small"]));
            Assert.Equal(new ExternalDataReference("weights.bin", 0, 2400), ExternalData.Reference(tensors["big"]));
            Assert.Equal(["weights.bin"], ExternalData.Files(model));
            Assert.Equal(big, OnnxGpt2Weights.Floats(tensors["big"], dir));
            Assert.Equal([1f, 2f], OnnxGpt2Weights.Floats(tensors["small"], dir));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
