using System.Text.Json.Nodes;
using FeatureFlow.Models.Export;

namespace FeatureFlow.Models.Folder;

/// <summary>
/// <c>genai_config.json</c>, so ONNX Runtime GenAI can run the folder's plain graph as a reference
/// (our graph concatenates past and present, hence no shared KV buffer).
/// </summary>
public static class GenAiConfig
{
    public const string FileName = "genai_config.json";

    /// <param name="modelType">GenAI's model type ("llama", "gpt2", ...), which selects its input conventions.</param>
    public static string Write(ModelArchitecture arch, string plainGraphFile, int bosId, int eosId,
        string modelType = "llama")
    {
        var config = new JsonObject
        {
            ["model"] = new JsonObject
            {
                ["bos_token_id"] = bosId,
                ["eos_token_id"] = eosId,
                ["pad_token_id"] = 0,
                ["context_length"] = arch.ContextLength,
                ["vocab_size"] = arch.VocabSize,
                ["type"] = modelType,
                ["decoder"] = new JsonObject
                {
                    ["session_options"] = new JsonObject { ["log_id"] = "onnxruntime-genai", ["provider_options"] = new JsonArray() },
                    ["filename"] = plainGraphFile,
                    ["head_size"] = arch.HeadSize,
                    ["hidden_size"] = arch.DModel,
                    ["num_attention_heads"] = arch.Heads,
                    ["num_hidden_layers"] = arch.Layers,
                    ["num_key_value_heads"] = arch.KvHeads,
                    ["inputs"] = new JsonObject
                    {
                        ["input_ids"] = GraphNames.InputIds,
                        ["attention_mask"] = GraphNames.AttentionMask,
                        ["position_ids"] = GraphNames.PositionIds,
                        ["past_key_names"] = "past_key_values.%d.key",
                        ["past_value_names"] = "past_key_values.%d.value",
                    },
                    ["outputs"] = new JsonObject
                    {
                        ["logits"] = GraphNames.Logits,
                        ["present_key_names"] = "present.%d.key",
                        ["present_value_names"] = "present.%d.value",
                    },
                },
            },
            ["search"] = new JsonObject
            {
                ["do_sample"] = false,
                ["max_length"] = arch.ContextLength,
                ["min_length"] = 0,
                ["num_beams"] = 1,
                ["num_return_sequences"] = 1,
                ["past_present_share_buffer"] = false,
                ["repetition_penalty"] = 1.0,
                ["temperature"] = 1.0,
                ["top_k"] = 1,
                ["top_p"] = 1.0,
            },
        };
        return config.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }) + "\n";
    }
}
