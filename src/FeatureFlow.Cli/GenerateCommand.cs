using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using FeatureFlow.Api.V1;
using FeatureFlow.Engine;
using FeatureFlow.Models.Folder;
using FeatureFlow.Server;
using Google.Protobuf;
using Grpc.Core;

namespace FeatureFlow.Cli;

public static class GenerateCommand
{
    public static Option<string> ServerOption() =>
        new("--server") { Description = "server address", DefaultValueFactory = _ => "http://127.0.0.1:50051" };

    public static Command Build(TextWriter output, TextWriter error)
    {
        var prompt = new Option<string>("--prompt") { Description = "prompt text (BOS is added; empty generates from BOS)", DefaultValueFactory = _ => "" };
        var promptIds = new Option<string?>("--prompt-ids") { Description = "comma-separated token ids used verbatim, e.g. 1,403,407" };
        var maxTokens = new Option<int?>("--max-tokens") { Description = "tokens to generate (default: the server's, 256)" };
        var temperature = new Option<float?>("--temperature") { Description = "0 is greedy (default 1.0)" };
        var topP = new Option<float?>("--top-p") { Description = "nucleus mass in (0, 1] (default 1.0 = off)" };
        var topK = new Option<int?>("--top-k") { Description = "keep the k most likely tokens (default off)" };
        var seed = new Option<ulong?>("--seed") { Description = "random seed (same seed, same tokens)" };
        var stop = new Option<string[]>("--stop") { Description = "stop string (repeatable)", AllowMultipleArgumentsPerToken = false };
        var steering = new Option<string?>("--steering") { Description = "steering spec as featureflow.v1.SteeringSpec JSON, inline or a file path" };
        var packs = new Option<string[]>("--pack") { Description = "apply a server-side steering pack: NAME or NAME:STRENGTH (repeatable)" };
        var json = new Option<bool>("--json") { Description = "print one JSON object {text, token_ids, finish_reason, usage} instead of streaming text" };
        var local = new Option<bool>("--local") { Description = "run the model in this process instead of calling a server" };
        var backend = new Option<LocalBackend>("--backend")
        {
            Description = "with --local: featureflow (our engine) or genai (ONNX Runtime GenAI's loop on the folder's hooked graph; no read-out or log-probabilities)",
            DefaultValueFactory = _ => LocalBackend.Featureflow,
        };
        var model = ServeCommand.ModelOption();
        var provider = ServeCommand.ProviderOption();
        var server = ServerOption();
        var key = ServerClient.KeyOption();
        var command = new Command("generate", "Stream a (steered) completion from a running server, or in-process with --local.")
        {
            prompt, promptIds, maxTokens, temperature, topP, topK, seed, stop, steering, packs, json, local, backend, model, provider, server, key,
        };
        command.SetAction((parse, ct) => CliApp.Guard(error, async () =>
        {
            var request = new GenerateRequest { Prompt = parse.GetValue(prompt)! };
            if (parse.GetValue(promptIds) is { } ids) request.PromptTokenIds.AddRange(ParseIds(ids));
            if (parse.GetValue(maxTokens) is { } m) request.MaxTokens = m;
            if (parse.GetValue(temperature) is { } t) request.Temperature = t;
            if (parse.GetValue(topP) is { } p) request.TopP = p;
            if (parse.GetValue(topK) is { } k) request.TopK = k;
            if (parse.GetValue(seed) is { } s) request.Seed = s;
            request.Stop.AddRange(parse.GetValue(stop) ?? []);
            if (parse.GetValue(steering) is { } spec) request.Steering = ParseSteering(spec);
            foreach (var pack in parse.GetValue(packs) ?? [])
            {
                request.Steering ??= new Api.V1.SteeringSpec();
                request.Steering.Terms.Add(new Api.V1.SteeringTerm { Pack = ParsePack(pack) });
            }

            if (!parse.GetValue(local) && parse.GetValue(backend) != LocalBackend.Featureflow)
                throw new ArgumentException("--backend: choose a backend only with --local (a server runs its own)");
            var responses = !parse.GetValue(local) ? Remote(request, parse.GetValue(server)!, parse.GetValue(key), ct)
                : parse.GetValue(backend) == LocalBackend.Genai ? LocalGenAi(request, parse.GetValue(model)!, ct)
                : Local(request, parse.GetValue(model)!, parse.GetValue(provider), ct);
            await Print(responses, parse.GetValue(json), output);
            return 0;
        }));
        return command;
    }

    private static int[] ParseIds(string text) =>
        text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(s => int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out var id) ? id : throw new FormatException($"--prompt-ids: '{s}' is not an integer"))
            .ToArray();

    internal static PackRef ParsePack(string text)
    {
        var colon = text.LastIndexOf(':');
        if (colon < 0) return new PackRef { Name = text };
        return float.TryParse(text[(colon + 1)..], NumberStyles.Float, CultureInfo.InvariantCulture, out var strength)
            ? new PackRef { Name = text[..colon], Strength = strength }
            : throw new FormatException($"--pack: '{text}' is not NAME or NAME:STRENGTH");
    }

    internal static Api.V1.SteeringSpec ParseSteering(string spec)
    {
        var text = spec.TrimStart().StartsWith('{') ? spec : File.ReadAllText(spec);
        try { return Api.V1.SteeringSpec.Parser.ParseJson(text); }
        catch (InvalidProtocolBufferException e) { throw new FormatException($"--steering: not a featureflow.v1.SteeringSpec ({e.Message})"); }
    }

    private static async IAsyncEnumerable<GenerateResponse> Remote(GenerateRequest request, string address, string? key,
        [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken ct)
    {
        using var client = new ServerClient(address, key);
        using var call = client.Inference.Generate(request, cancellationToken: ct);
        await foreach (var response in call.ResponseStream.ReadAllAsync(ct)) yield return response;
    }

    private static async IAsyncEnumerable<GenerateResponse> Local(GenerateRequest request, string modelDir, ExecutionProviderPreference provider, [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken ct)
    {
        using var engine = new GenerationEngine(ModelFolder.Open(modelDir), new EngineOptions { ExecutionProvider = provider });
        var (domain, readout) = RequestMapper.ToDomain(request, engine, Steering.Packs.SteeringCatalog.Load(engine.Folder));
        await foreach (var u in engine.GenerateAsync(domain, ct))
            yield return RequestMapper.ToApi(u, readout);
    }

    /// <summary>
    /// ONNX Runtime GenAI's own loop on the folder's hooked graph (genai_config.json names the graph without hooks),
    /// with the request's steering passed as the graph's steering inputs.
    /// </summary>
    private static async IAsyncEnumerable<GenerateResponse> LocalGenAi(GenerateRequest request, string modelDir,
        [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken ct)
    {
        var folder = ModelFolder.Open(modelDir);
        // genai_config.json describes the source graph's I/O; a hooked graph adapted to ours no longer has it.
        if (folder.Manifest.Hooking is { InterfaceChanges.Count: > 0 } hooking)
            throw new ArgumentException($"--backend genai: {folder.Manifest.Graphs.Hooked} has featureflow's inputs and "
                + $"outputs, not those of {hooking.SourceGraph} that genai_config.json describes "
                + $"({string.Join("; ", hooking.InterfaceChanges)}); ONNX Runtime GenAI cannot drive it, use --backend featureflow");
        using var backend = new GenAiBackend(folder.Directory, folder.LoadTokenizer(),
            new GenAiBackendOptions { DecoderFile = folder.Manifest.Graphs.Hooked });
        var model = new RequestMapper.ModelContext(backend.Compiler!, backend.Tokenizer, backend.ContextLength,
            new EngineOptions().DefaultMaxTokens);
        var (domain, readout) = RequestMapper.ToDomain(request, model, Steering.Packs.SteeringCatalog.Load(folder));
        await foreach (var u in backend.GenerateAsync(domain, ct))
            yield return RequestMapper.ToApi(u, readout);
    }

    private enum LocalBackend { Featureflow, Genai }

    private static async Task Print(IAsyncEnumerable<GenerateResponse> responses, bool json, TextWriter output)
    {
        var text = new System.Text.StringBuilder();
        var ids = new List<int>();
        GenerateResponse? last = null;
        await foreach (var r in responses)
        {
            if (json)
            {
                text.Append(r.Text);
                ids.AddRange(r.TokenIds);
            }
            else
            {
                await output.WriteAsync(r.Text);
                await output.FlushAsync();
            }
            last = r;
        }
        if (!json)
        {
            await output.WriteLineAsync();
            return;
        }
        var result = new Dictionary<string, object?>
        {
            ["text"] = text.ToString(),
            ["token_ids"] = ids,
            ["finish_reason"] = last?.FinishReason.ToString().ToLowerInvariant(),
            ["usage"] = last?.Usage is { } u ? new { prompt_tokens = u.PromptTokens, completion_tokens = u.CompletionTokens } : null,
        };
        await output.WriteLineAsync(JsonSerializer.Serialize(result));
    }
}
