using System.Text.Json.Nodes;
using FeatureFlow.Models.Folder;
using FeatureFlow.Models.Tokenization;

namespace FeatureFlow.Models.Tests.Tokenization;

public class HfModelFolderTokenizerTests
{
    [Fact]
    public void Folder_whose_manifest_names_an_hf_tokenizer_loads_it_with_the_manifest_ids()
    {
        var dir = Directory.CreateTempSubdirectory("featureflow-hf-folder-").FullName;
        try
        {
            foreach (var file in Directory.GetFiles(RepoPaths.Stories260kModel))
                File.Copy(file, Path.Combine(dir, Path.GetFileName(file)));
            File.WriteAllText(Path.Combine(dir, "tokenizer.json"),
                Llama2cToTokenizerJson.Convert(Path.Combine(dir, "tok512.bin"), 512));
            var manifestPath = Path.Combine(dir, ModelManifest.FileName);
            var manifest = JsonNode.Parse(File.ReadAllText(manifestPath))!;
            manifest["tokenizer"] = new JsonObject
            {
                ["format"] = "hf", ["file"] = "tokenizer.json", ["bos_id"] = 1, ["eos_id"] = 2,
            };
            File.WriteAllText(manifestPath, manifest.ToJsonString());

            var tokenizer = ModelFolder.Open(dir).LoadTokenizer();
            Assert.IsType<HfTokenizer>(tokenizer);
            Assert.Equal((1, 2, 512), (tokenizer.BosId, tokenizer.EosId, tokenizer.VocabSize));
            foreach (var (text, ids) in RunCReference.EncodeVectors()) Assert.Equal(ids, tokenizer.Encode(text, addBos: true));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
