using System.Text.Json;

namespace FeatureFlow.Testing;

/// <summary>One case of llama2.c run.c's reference outputs (tests/fixtures/stories260k/run_c_reference_outputs.json).</summary>
public sealed record RunCCase(string Name, int[] PromptIds, int[] GeneratedInOrder, string Text)
{
    /// <summary>Tokens run.c sampled: its loop also "generates" the forced prompt tokens after the first.</summary>
    public int[] SampledIds => GeneratedInOrder[(PromptIds.Length - 1)..];

    public override string ToString() => Name;
}

public static class RunCReference
{
    public static IReadOnlyList<RunCCase> Cases { get; } = Load();

    public static RunCCase Case(string name) => Cases.Single(c => c.Name == name);

    public static IEnumerable<(string Text, int[] Ids)> EncodeVectors()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(RepoPaths.Stories260kFixtures, "tok512_encode_vectors.json")));
        foreach (var v in doc.RootElement.GetProperty("vectors").EnumerateArray())
            yield return (v.GetProperty("text").GetString()!, v.GetProperty("run_c_encode_bos1_eos0").EnumerateArray().Select(e => e.GetInt32()).ToArray());
    }

    private static IReadOnlyList<RunCCase> Load()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(RepoPaths.Stories260kFixtures, "run_c_reference_outputs.json")));
        return doc.RootElement.GetProperty("cases").EnumerateArray().Select(c => new RunCCase(
            c.GetProperty("name").GetString()!,
            c.GetProperty("prompt_token_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray(),
            c.GetProperty("generated_token_ids_in_order").EnumerateArray().Select(e => e.GetInt32()).ToArray(),
            c.GetProperty("stdout_text").GetString()!)).ToArray();
    }
}
