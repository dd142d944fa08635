using FeatureFlow.Models.Folder;
using FeatureFlow.Models.Hooking;
using FeatureFlow.Steering;

namespace FeatureFlow.Models.Tests.Hooking;

/// <summary>The two third-party fixtures, each hooked once into a temporary model folder for the tests that share them.</summary>
public sealed class HookedFixtures : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("featureflow-hooked-").FullName;

    public HookedFixtures()
    {
        Torch = Hook("torch", Path.Combine(RepoPaths.TorchTinyGpt2, "model.onnx"));
        GenAi = Hook("genai", Path.Combine(RepoPaths.GenAiTinyGpt2, "past.onnx"));
    }

    public HookedModel Torch { get; }
    public HookedModel GenAi { get; }

    public HookedModel this[string family] => family switch
    {
        "torch" => Torch,
        "genai" => GenAi,
        _ => throw new ArgumentOutOfRangeException(nameof(family)),
    };

    private HookedModel Hook(string name, string graph)
    {
        var dir = Path.Combine(_root, name);
        HookedFolderWriter.Write(new HookRequest { InputGraph = graph, OutputDirectory = dir, Options = new HookOptions { SlotsPerSite = 3 } });
        return new HookedModel(ModelFolder.Open(dir), graph);
    }

    public void Dispose() => Directory.Delete(_root, true);
}

/// <summary>A hooked folder, the third-party graph it came from, and runners over both through the recorded I/O.</summary>
public sealed record HookedModel(ModelFolder Folder, string SourceGraph)
{
    public HookingSection Hooking => Folder.Manifest.Hooking!;
    public ModelArchitecture Architecture => Folder.Manifest.Architecture;
    public SteeringShape SteeringShape => new(Architecture.Layers, Architecture.DModel, Folder.Manifest.Steering.SlotsPerSite);

    public DecoderGraphRunner Hooked(int batch = 1) =>
        new(Folder.HookedGraphPath, Hooking.Io, Architecture.Layers, batch, Architecture.DModel);

    /// <summary>The untouched source graph (the folder's plain graph is a byte copy of it).</summary>
    public DecoderGraphRunner Plain(int batch = 1) =>
        new(Folder.PlainGraphPath, Hooking.Io, Architecture.Layers, batch, Architecture.DModel);
}

[CollectionDefinition(Name)]
public sealed class HookedFixturesCollection : ICollectionFixture<HookedFixtures>
{
    public const string Name = "hooked third-party fixtures";
}
