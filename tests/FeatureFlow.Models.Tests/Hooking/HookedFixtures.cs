using FeatureFlow.Models.Folder;
using FeatureFlow.Models.Hooking;
using FeatureFlow.Onnx;
using FeatureFlow.Steering;

namespace FeatureFlow.Models.Tests.Hooking;

/// <summary>
/// The two third-party fixtures, each hooked once into a temporary model folder for the tests that share them, and
/// also hooked without the interface adapter (the graph the folder's hooked graph was adapted from).
/// </summary>
public sealed class HookedFixtures : IDisposable
{
    public static readonly HookOptions Options = new() { SlotsPerSite = 3 };

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
        HookedFolderWriter.Write(new HookRequest { InputGraph = graph, OutputDirectory = dir, Options = Options });
        var unadapted = Path.Combine(_root, $"{name}-unadapted.onnx");
        OnnxModelFile.Write(GraphHooker.Hook(OnnxModelFile.Read(graph), Options).Model, unadapted);
        return new HookedModel(ModelFolder.Open(dir), graph, unadapted);
    }

    public void Dispose() => Directory.Delete(_root, true);
}

/// <summary>
/// A hooked folder, the third-party graph it came from and that graph hooked but not adapted, with runners over each:
/// the source and unadapted graphs through their own I/O (the manifest's <see cref="HookingSection.Io"/>), the
/// folder's graphs through our interface as the detector reads it from the folder's plain graph.
/// </summary>
public sealed record HookedModel(ModelFolder Folder, string SourceGraph, string UnadaptedHookedGraph)
{
    public HookingSection Hooking => Folder.Manifest.Hooking!;
    public ModelArchitecture Architecture => Folder.Manifest.Architecture;
    public SteeringShape SteeringShape => new(Architecture.Layers, Architecture.DModel, Folder.Manifest.Steering.SlotsPerSite);
    public DecoderIo Interface { get; } = DecoderIoDetector.Detect(OnnxModelFile.Read(Folder.PlainGraphPath).Graph);

    /// <summary>The folder's hooked graph (adapted to our interface).</summary>
    public DecoderGraphRunner Hooked(int batch = 1) => Runner(Folder.HookedGraphPath, Interface, batch);

    /// <summary>The folder's plain graph: the source graph adapted to our interface, without hooks.</summary>
    public DecoderGraphRunner Plain(int batch = 1) => Runner(Folder.PlainGraphPath, Interface, batch);

    /// <summary>The untouched third-party graph.</summary>
    public DecoderGraphRunner Source(int batch = 1) => Runner(SourceGraph, Hooking.Io, batch);

    /// <summary>The third-party graph hooked, on its own I/O.</summary>
    public DecoderGraphRunner Unadapted(int batch = 1) => Runner(UnadaptedHookedGraph, Hooking.Io, batch);

    private DecoderGraphRunner Runner(string graph, DecoderIo io, int batch) =>
        new(graph, io, Architecture.Layers, batch, Architecture.DModel);
}

[CollectionDefinition(Name)]
public sealed class HookedFixturesCollection : ICollectionFixture<HookedFixtures>
{
    public const string Name = "hooked third-party fixtures";
}
