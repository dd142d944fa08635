namespace FeatureFlow.Testing;

/// <summary>Locations inside this repository. Tests read only the repository, never ../shared or the network.</summary>
public static class RepoPaths
{
    public static string Root { get; } = FindRoot();
    public static string Stories260kModel => Path.Combine(Root, "models", "stories260k");
    public static string Stories260kFixtures => Path.Combine(Root, "tests", "fixtures", "stories260k");
    /// <summary>Third-party ONNX exports (onnxruntime-genai's fused GPT-2, a torch.onnx GPT-2); see its NOTICE.md.</summary>
    public static string GenAiTinyGpt2 => Path.Combine(Root, "tests", "fixtures", "onnx-exports", "genai-tiny-random-gpt2");
    public static string TorchTinyGpt2 => Path.Combine(Root, "tests", "fixtures", "onnx-exports", "torch-tiny-gpt2");

    private static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "FeatureFlow.Inference.sln"))) return dir.FullName;
        throw new InvalidOperationException($"no FeatureFlow.Inference.sln above {AppContext.BaseDirectory}");
    }
}
