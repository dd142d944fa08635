using System.Text.Json;
using FeatureFlow.Engine;
using FeatureFlow.Server;

namespace FeatureFlow.Cli.Tests;

public class CliTests
{
    [Fact]
    public async Task Export_regenerates_the_committed_model_folder_byte_for_byte()
    {
        var model = RepoPaths.Stories260kModel;
        var outDir = Directory.CreateTempSubdirectory("featureflow-export-").FullName;
        try
        {
            // The folder's own copies of the llama2.c files are the shared ones (CheckpointTests pins their hash).
            var (exit, stdout, stderr) = await CliRunner.Run("export", "--checkpoint", Path.Combine(model, "stories260K.bin"),
                "--tokenizer", Path.Combine(model, "tok512.bin"), "--out", outDir);
            Assert.True(exit == 0, stderr);
            Assert.Contains("wrote decoder_hooked.onnx", stdout);
            var written = Directory.GetFiles(outDir).Select(Path.GetFileName).Order().ToArray();
            Assert.Contains("featureflow.json", written);
            foreach (var file in written)
                Assert.True(File.ReadAllBytes(Path.Combine(outDir, file!)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(model, file!))), $"{file} differs from the committed one");
        }
        finally
        {
            Directory.Delete(outDir, true);
        }
    }

    [Fact]
    public async Task Generate_local_json_prints_text_and_run_c_token_ids()
    {
        var c = RunCReference.Case("greedy_prompt_once_upon_a_time");
        var (exit, stdout, stderr) = await CliRunner.Run("generate", "--local", "--provider", "Cpu", "--model", RepoPaths.Stories260kModel,
            "--prompt-ids", string.Join(",", c.PromptIds), "--temperature", "0", "--max-tokens", "12", "--json");
        Assert.True(exit == 0, stderr);
        using var json = JsonDocument.Parse(stdout);
        Assert.Equal(c.SampledIds[..12], json.RootElement.GetProperty("token_ids").EnumerateArray().Select(e => e.GetInt32()));
        Assert.StartsWith(", there was a little girl", json.RootElement.GetProperty("text").GetString());
        Assert.Equal("length", json.RootElement.GetProperty("finish_reason").GetString());
    }

    [Fact]
    public async Task Generate_and_info_talk_to_a_running_server()
    {
        await using var server = ServerHost.Create(new ServerOptions
        {
            ModelDirectory = RepoPaths.Stories260kModel,
            Port = 0,
            Engine = new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu },
        });
        await server.StartAsync();

        var (exit, stdout, stderr) = await CliRunner.Run("generate", "--server", server.Address, "--prompt", "Once upon a time", "--temperature", "0", "--max-tokens", "9");
        Assert.True(exit == 0, stderr);
        Assert.Equal(", there was a little girl named\n", stdout);

        (exit, stdout, stderr) = await CliRunner.Run("info", "--server", server.Address);
        Assert.True(exit == 0, stderr);
        Assert.Contains("\"executionProvider\": \"CPUExecutionProvider\"", stdout);

        (exit, _, stderr) = await CliRunner.Run("generate", "--server", server.Address, "--top-p", "0");
        Assert.Equal(1, exit);
        Assert.Contains("InvalidArgument: top_p:", stderr);

        // compare: a sweep from "off"; its first arm is the plain generation with the same seed.
        (exit, stdout, stderr) = await CliRunner.Run("compare", "--server", server.Address, "--prompt", "Once upon a time", "--pack", "happy",
            "--strengths", "0,2", "--seed", "5", "--max-tokens", "12", "--json");
        Assert.True(exit == 0, stderr);
        var arms = JsonDocument.Parse(stdout).RootElement.GetProperty("arms").EnumerateArray().ToArray();
        Assert.Equal(["pack happy @ 0", "pack happy @ 2"], arms.Select(a => a.GetProperty("label").GetString()));
        (exit, var plain, stderr) = await CliRunner.Run("generate", "--server", server.Address, "--prompt", "Once upon a time", "--seed", "5",
            "--max-tokens", "12", "--json");
        Assert.Equal(JsonDocument.Parse(plain).RootElement.GetProperty("token_ids").ToString(), arms[0].GetProperty("token_ids").ToString());
        Assert.NotEqual(arms[0].GetProperty("token_ids").ToString(), arms[1].GetProperty("token_ids").ToString());

        (exit, stdout, stderr) = await CliRunner.Run("compare", "--server", server.Address, "--pack", "happy", "--strengths", "0,x");
        Assert.Equal(1, exit);
        Assert.Contains("--strengths: 'x' is not a number", stderr);
    }

    [Fact]
    public async Task Steering_flag_takes_a_steering_spec_in_json()
    {
        var direction = string.Join(",", Enumerable.Repeat("0.5", 64));
        var spec = "{\"terms\":[{\"hook\":\"blocks.2.hook_resid_post\",\"operation\":\"STEERING_OPERATION_ADD\",\"value\":8,\"vector\":{\"direction\":[" + direction + "]}}]}";
        string[] common = ["generate", "--local", "--provider", "Cpu", "--model", RepoPaths.Stories260kModel, "--temperature", "0", "--max-tokens", "16", "--json"];
        var plain = await CliRunner.Run(common);
        var steered = await CliRunner.Run([.. common, "--steering", spec]);
        Assert.True(steered.Exit == 0, steered.Err);
        Assert.NotEqual(JsonDocument.Parse(plain.Out).RootElement.GetProperty("token_ids").ToString(), JsonDocument.Parse(steered.Out).RootElement.GetProperty("token_ids").ToString());
    }

    [Fact]
    public async Task Pack_flag_is_a_pack_term()
    {
        string[] common = ["generate", "--local", "--provider", "Cpu", "--model", RepoPaths.Stories260kModel, "--seed", "3", "--max-tokens", "24", "--json"];
        var byFlag = await CliRunner.Run([.. common, "--pack", "happy:0.8"]);
        var byJson = await CliRunner.Run([.. common, "--steering", "{\"terms\":[{\"pack\":{\"name\":\"happy\",\"strength\":0.8}}]}"]);
        var plain = await CliRunner.Run(common);
        Assert.True(byFlag.Exit == 0, byFlag.Err);
        string Ids((int, string Out, string) r) => JsonDocument.Parse(r.Out).RootElement.GetProperty("token_ids").ToString();
        Assert.Equal(Ids(byJson), Ids(byFlag));
        Assert.NotEqual(Ids(plain), Ids(byFlag));
    }

    [Fact]
    public async Task The_genai_backend_gives_our_engine_s_greedy_tokens_with_and_without_a_pack()
    {
        string[] common = ["generate", "--local", "--model", RepoPaths.Stories260kModel, "--prompt", "Once upon a time",
            "--temperature", "0", "--max-tokens", "24", "--json"];
        static string Ids((int Exit, string Out, string Err) r) =>
            r.Exit == 0 ? JsonDocument.Parse(r.Out).RootElement.GetProperty("token_ids").ToString() : r.Err;
        var ours = await CliRunner.Run([.. common, "--provider", "Cpu", "--pack", "happy"]);
        var genAi = await CliRunner.Run([.. common, "--backend", "genai", "--pack", "happy"]);
        var genAiPlain = await CliRunner.Run([.. common, "--backend", "genai"]);
        Assert.Equal(Ids(ours), Ids(genAi));
        Assert.NotEqual(Ids(genAiPlain), Ids(genAi));
        var (exit, _, stderr) = await CliRunner.Run("generate", "--backend", "genai", "--prompt", "x");
        Assert.Equal(1, exit);
        Assert.Contains("--backend", stderr);
    }

    [Fact]
    public async Task A_missing_model_folder_is_one_clear_line_and_exit_code_1()
    {
        var (exit, _, stderr) = await CliRunner.Run("generate", "--local", "--model", "/nonexistent/model");
        Assert.Equal(1, exit);
        Assert.Contains("featureflow export", stderr);
    }

    [Fact]
    public async Task Bench_serving_prints_one_row_per_mode_with_measured_batches()
    {
        var (exit, stdout, stderr) = await CliRunner.Run("bench", "serving", "--model", RepoPaths.Stories260kModel,
            "--streams", "1,4", "--rounds", "1", "--max-tokens", "150");
        Assert.True(exit == 0, stderr);
        var rows = stdout.Split('\n').Where(l => l.StartsWith("| gRPC") || l.StartsWith("| engine")).ToArray();
        Assert.Equal(4, rows.Length);
        // Four concurrent streams really shared decode steps (the rows-per-step column of the 4-stream rows). A
        // stream is long enough (150 tokens, ~10 ms) that the four overlap however their calls arrive.
        var rowsPerStep = rows.Where(r => r.Contains("4 streams")).Select(r => double.Parse(r.Split('|')[5], System.Globalization.CultureInfo.InvariantCulture));
        Assert.All(rowsPerStep, x => Assert.True(x > 1.5, $"{x} rows per step"));
    }

    [Fact]
    public async Task Experiments_list_and_show_print_a_running_server_s_figures()
    {
        var dir = Directory.CreateTempSubdirectory("featureflow-cli-exp-").FullName;
        var config = Path.Combine(dir, "experiments.yaml");
        await File.WriteAllTextAsync(config, """
            experiments:
              - name: demo
                salt: x
                arms:
                  - {name: off, weight: 1, steering: {}}
                  - {name: on, weight: 1, steering: {"terms": [{"pack": {"name": "bird"}}]}}
            """);
        await using (var server = ServerHost.Create(new ServerOptions
        {
            ModelDirectory = RepoPaths.Stories260kModel, Port = 0, ExperimentsConfig = config, ExperimentsDatabase = Path.Combine(dir, "figures.db"),
            Engine = new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu },
        }))
        {
            await server.StartAsync();
            using var channel = Grpc.Net.Client.GrpcChannel.ForAddress(server.Address);
            var client = new Api.V1.Inference.InferenceClient(channel);
            foreach (var (subject, value) in new[] { ("a", 1.0), ("b", 2.0), ("c", 4.0), ("d", 3.0) })
                await client.RecordOutcomeAsync(new Api.V1.RecordOutcomeRequest { Experiment = "demo", SubjectId = subject, Name = "stars", Value = value });

            var (exit, stdout, stderr) = await CliRunner.Run("experiments", "list", "--server", server.Address, "--json");
            Assert.True(exit == 0, stderr);
            Assert.Equal("demo", JsonDocument.Parse(stdout).RootElement.GetProperty("experiments")[0].GetProperty("name").GetString());
            (exit, stdout, stderr) = await CliRunner.Run("experiments", "show", "demo", "--server", server.Address);
            Assert.True(exit == 0, stderr);
            Assert.Contains("off (control)", stdout);
            Assert.Contains("stars", stdout);
            Assert.Contains("[95% CI]", stdout);
            (exit, _, stderr) = await CliRunner.Run("experiments", "show", "nope", "--server", server.Address);
            Assert.Equal(1, exit);
            Assert.Contains("NotFound: name: no experiment named 'nope'", stderr);
        }
        Directory.Delete(dir, recursive: true);
    }

    [Fact]
    public async Task Client_verbs_send_the_api_key_a_server_requires()
    {
        var keys = Path.Combine(Directory.CreateTempSubdirectory("featureflow-cli-keys-").FullName, "keys.txt");
        await File.WriteAllTextAsync(keys, "cli-test-key-0123456789\n");
        await using var server = ServerHost.Create(new ServerOptions
        {
            ModelDirectory = RepoPaths.Stories260kModel, Port = 0, ApiKeysFile = keys,
            Engine = new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu },
        });
        await server.StartAsync();
        var (exit, _, stderr) = await CliRunner.Run("info", "--server", server.Address);
        Assert.Equal(1, exit);
        Assert.Contains("Unauthenticated", stderr);
        (exit, var stdout, stderr) = await CliRunner.Run("generate", "--server", server.Address, "--api-key", "cli-test-key-0123456789",
            "--prompt", "Once upon a time", "--temperature", "0", "--max-tokens", "9");
        Assert.True(exit == 0, stderr);
        Assert.Equal(", there was a little girl named\n", stdout);
        File.Delete(keys);
    }
}
