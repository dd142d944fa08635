using Microsoft.ML.OnnxRuntimeGenAI;

namespace FeatureFlow.GenAi.Tests;

public class GenAiInteropTests
{
    public static TheoryData<string> RunCCases() => new(RunCReference.Cases.Select(c => c.Name));

    [Theory]
    [MemberData(nameof(RunCCases))]
    public void Onnx_runtime_genai_runs_the_plain_graph_and_reproduces_run_c(string name)
    {
        var c = RunCReference.Case(name);
        using var model = new Model(RepoPaths.Stories260kModel);
        using var parameters = new GeneratorParams(model);
        parameters.SetSearchOption("do_sample", false);
        parameters.SetSearchOption("max_length", c.PromptIds.Length + c.SampledIds.Length);
        using var generator = new Generator(model, parameters);
        generator.AppendTokens(c.PromptIds);
        while (!generator.IsDone()) generator.GenerateNextToken();
        var sequence = generator.GetSequence(0).ToArray();
        Assert.Equal(c.PromptIds, sequence[..c.PromptIds.Length]);
        Assert.Equal(c.SampledIds, sequence[c.PromptIds.Length..]);
    }
}
