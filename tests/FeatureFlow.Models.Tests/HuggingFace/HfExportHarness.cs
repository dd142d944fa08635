using FeatureFlow.Engine;
using FeatureFlow.Models.Folder;
using FeatureFlow.Steering;

namespace FeatureFlow.Models.Tests.HuggingFace;

/// <summary>A temporary folder for checkpoints and exports, deleted with everything in it.</summary>
internal sealed class TempFolder : IDisposable
{
    public string Path { get; } = Directory.CreateTempSubdirectory("featureflow-hf-").FullName;

    public string Sub(string name) => System.IO.Path.Combine(Path, name);

    /// <summary>Everything in the folder, for checking that a failed export left nothing behind.</summary>
    public string[] Entries() => Directory.GetFileSystemEntries(Path).Select(System.IO.Path.GetFileName).Order().ToArray()!;

    public void Dispose() => Directory.Delete(Path, recursive: true);
}

/// <summary>Runs exported graphs on CPU: the Concat graphs through HookedDecoder, the batched ones through
/// ModelRunner, as the engine does.</summary>
internal static class GraphRuns
{
    private static readonly EngineOptions Cpu = new() { ExecutionProvider = ExecutionProviderPreference.Cpu, MaxBatchRows = 1 };

    /// <summary>Logits of the prompt's positions [T × vocab], then of each token of <paramref name="follow"/> fed in
    /// turn (the same tokens for every graph compared, whatever each one would pick).</summary>
    public static List<float[]> Concat(string graphPath, ModelArchitecture arch, int[] prompt, int[] follow,
        SteeringTensors? steering = null)
    {
        using var decoder = new HookedDecoder(graphPath, arch, Cpu);
        using var state = decoder.NewState();
        using var bound = decoder.HasHooks ? decoder.Bind(steering ?? new SteeringTensors(decoder.SteeringShape!)) : null;
        var steps = new List<float[]> { decoder.Forward(state, prompt, bound) };
        foreach (var token in follow) steps.Add(decoder.Forward(state, [token], bound));
        return steps;
    }

    /// <summary>The graph's own greedy ids after the prompt, <paramref name="count"/> of them.</summary>
    public static int[] GreedyConcat(string graphPath, ModelArchitecture arch, int[] prompt, int count)
    {
        using var decoder = new HookedDecoder(graphPath, arch, Cpu);
        using var state = decoder.NewState();
        using var bound = decoder.HasHooks ? decoder.Bind(new SteeringTensors(decoder.SteeringShape!)) : null;
        var ids = new List<int> { Numerics.ArgMax(Last(decoder.Forward(state, prompt, bound), arch.VocabSize)) };
        while (ids.Count < count) ids.Add(Numerics.ArgMax(decoder.Forward(state, [ids[^1]], bound)));
        return ids.ToArray();
    }

    /// <summary>The batched graphs as the engine runs them: the prefill's last-position logits, then each token of
    /// <paramref name="follow"/> decoded in turn (steering optional).</summary>
    public static List<float[]> Batched(ModelFolder folder, int[] prompt, int[] follow, SteeringTensors? steering = null)
    {
        using var runner = new ModelRunner(folder.BatchedGraphPath!, folder.BatchedPlainGraphPath,
            folder.Manifest.Architecture, Cpu);
        if (steering is not null) runner.Steering.Write(0, steering);
        var steps = new List<float[]> { runner.Prefill(0, prompt, [], []).ToArray() };
        var noReadout = new int[runner.SteeringShape.Sites];
        foreach (var token in follow)
        {
            runner.SetNextToken(0, token);
            steps.Add(runner.Decode(1, noReadout).ToArray());
        }
        return steps;
    }

    /// <summary>The batched graphs' own greedy ids after the prompt, <paramref name="count"/> of them.</summary>
    public static int[] GreedyBatched(ModelFolder folder, int[] prompt, int count)
    {
        using var runner = new ModelRunner(folder.BatchedGraphPath!, folder.BatchedPlainGraphPath,
            folder.Manifest.Architecture, Cpu);
        var ids = new List<int> { Numerics.ArgMax(runner.Prefill(0, prompt, [], [])) };
        var noReadout = new int[runner.SteeringShape.Sites];
        while (ids.Count < count)
        {
            runner.SetNextToken(0, ids[^1]);
            ids.Add(Numerics.ArgMax(runner.Decode(1, noReadout)));
        }
        return ids.ToArray();
    }

    public static float[] Last(float[] logits, int vocab) => logits[^vocab..];
}
