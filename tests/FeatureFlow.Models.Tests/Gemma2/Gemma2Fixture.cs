using FeatureFlow.Engine;
using FeatureFlow.Models.Export;
using FeatureFlow.Models.Gemma2;
using FeatureFlow.Onnx;
using FeatureFlow.Steering;

namespace FeatureFlow.Models.Tests.Gemma2;

/// <summary>
/// The tiny Gemma 2 checkpoint written to a temporary folder as config.json + model.safetensors, read back through
/// <see cref="Gemma2Checkpoint"/>, and its graphs exported there on demand (one file per config and options).
/// </summary>
public sealed class Gemma2Fixture : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), $"featureflow-gemma2-{Guid.NewGuid():N}");
    private readonly Dictionary<(Gemma2Config, HookedGraphOptions), string> _graphs = [];
    private readonly Lock _lock = new();

    public Gemma2Fixture()
    {
        var checkpointDir = Path.Combine(_dir, "checkpoint");
        TinyGemma2.Write(checkpointDir, TinyGemma2.Config());
        Checkpoint = TinyGemma2.Read(checkpointDir);
        Shape = new SteeringShape(Architecture.Layers, Architecture.DModel, Hooked.SlotsPerSite);
    }

    public static EngineOptions Cpu { get; } = new() { ExecutionProvider = ExecutionProviderPreference.Cpu };
    public static HookedGraphOptions Hooked { get; } = new() { SlotsPerSite = 4 };
    public static HookedGraphOptions Plain { get; } = new() { Hooks = false };
    /// <summary>The batched graph as model folders ship it: its hooks are SteeringHook nodes.</summary>
    public static HookedGraphOptions HookedBatched { get; } = Hooked with
    {
        KvLayout = KvCacheLayout.SharedBuffer, HookOperators = HookOperators.CustomOperator,
    };
    public static HookedGraphOptions PlainBatched { get; } = Plain with { KvLayout = KvCacheLayout.SharedBuffer };

    public Gemma2Checkpoint Checkpoint { get; }
    public Gemma2Config Config => Checkpoint.Config;
    public ModelArchitecture Architecture => Config.Architecture;
    public SteeringShape Shape { get; }

    public Gemma2Reference Reference(Gemma2Config? config = null) => new(config ?? Config, Checkpoint.Weights);

    /// <summary>The graph of <paramref name="config"/> (the checkpoint's own by default) exported with
    /// <paramref name="options"/>, written once.</summary>
    public string Graph(HookedGraphOptions options, Gemma2Config? config = null)
    {
        config ??= Config;
        lock (_lock)
        {
            if (_graphs.TryGetValue((config, options), out var path)) return path;
            path = Path.Combine(_dir, $"graph{_graphs.Count}.onnx");
            OnnxModelFile.Write(Gemma2GraphExporter.Export(config, Checkpoint.Weights, options, "tiny-gemma2"), path);
            _graphs[(config, options)] = path;
            return path;
        }
    }

    public HookedDecoder Decoder(HookedGraphOptions options, Gemma2Config? config = null) =>
        new(Graph(options, config), (config ?? Config).Architecture, Cpu);

    public void Dispose()
    {
        if (Directory.Exists(_dir)) Directory.Delete(_dir, recursive: true);
    }
}
