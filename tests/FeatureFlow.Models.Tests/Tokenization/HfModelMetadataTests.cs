using FeatureFlow.Models.Folder;

namespace FeatureFlow.Models.Tests.Tokenization;

public class HfModelMetadataTests
{
    [Fact]
    public void Torch_export_folder_takes_its_values_from_config_json()
    {
        var metadata = HfModelMetadata.Read(RepoPaths.TorchTinyGpt2);
        Assert.Equal(1024, metadata.ContextLength);
        Assert.Equal(50257, metadata.VocabSize);
        Assert.Equal(50256, metadata.BosId);
        Assert.Equal([50256], metadata.EosIds);
        Assert.Null(metadata.PadId);
        Assert.False(metadata.HasChatTemplate);
    }

    [Fact]
    public void GenAi_folder_takes_its_values_from_genai_config_json()
    {
        var metadata = HfModelMetadata.Read(RepoPaths.GenAiTinyGpt2);
        Assert.Equal(512, metadata.ContextLength);
        Assert.Equal(1000, metadata.VocabSize);
        Assert.Equal(98, metadata.BosId);
        Assert.Equal([98], metadata.EosIds);
        Assert.Equal(98, metadata.PadId);
        Assert.False(metadata.HasChatTemplate);
    }

    [Fact]
    public void Tokenizer_config_strings_resolve_through_tokenizer_json_and_its_chat_template_is_found()
    {
        var dir = Directory.CreateTempSubdirectory("featureflow-hf-metadata-").FullName;
        try
        {
            File.Copy(Path.Combine(RepoPaths.TorchTinyGpt2, "tokenizer.json"), Path.Combine(dir, "tokenizer.json"));
            File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), """
                {"bos_token": {"content": "<|endoftext|>", "__type": "AddedToken"}, "eos_token": "Hello",
                 "pad_token": null, "model_max_length": 1000000000000000019884624838656,
                 "chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"}
                """);
            var metadata = HfModelMetadata.Read(dir);
            Assert.Equal(50256, metadata.BosId);
            Assert.Equal([15496], metadata.EosIds);
            Assert.Null(metadata.PadId);
            Assert.Null(metadata.ContextLength);
            Assert.Equal("{% for m in messages %}{{ m.content }}{% endfor %}", metadata.ChatTemplate);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void Generation_config_eos_list_wins_over_config_json()
    {
        var dir = Directory.CreateTempSubdirectory("featureflow-hf-metadata-").FullName;
        try
        {
            File.WriteAllText(Path.Combine(dir, "config.json"), """{"eos_token_id": 2, "max_position_embeddings": 2048}""");
            File.WriteAllText(Path.Combine(dir, "generation_config.json"), """{"eos_token_id": [128001, 128009]}""");
            File.WriteAllText(Path.Combine(dir, "chat_template.jinja"), "{{ messages }}");
            var metadata = HfModelMetadata.Read(dir);
            Assert.Equal([128001, 128009], metadata.EosIds);
            Assert.Equal(2048, metadata.ContextLength);
            Assert.True(metadata.HasChatTemplate);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void Folder_without_any_config_is_a_clear_error()
    {
        var dir = Directory.CreateTempSubdirectory("featureflow-hf-metadata-").FullName;
        try
        {
            var e = Assert.Throws<FileNotFoundException>(() => HfModelMetadata.Read(dir));
            Assert.Contains(dir, e.Message);
            Assert.Contains("config.json", e.Message);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
