using System.CommandLine;
using FeatureFlow.Engine;
using FeatureFlow.Server;

namespace FeatureFlow.Cli;

public static class ServeCommand
{
    public static Option<string> ModelOption() =>
        new("--model") { Description = "model folder", DefaultValueFactory = _ => ServerOptions.DefaultModelDirectory };

    public static Option<ExecutionProviderPreference> ProviderOption() =>
        new("--provider") { Description = "execution provider: Auto (CUDA if it loads, else CPU), Cpu or Cuda", DefaultValueFactory = _ => ExecutionProviderPreference.Auto };

    public static Option<int> IntraOpThreadsOption() =>
        new("--intra-op-threads") { Description = "ONNX Runtime threads inside one step (0: one per core; 1, the default, is fastest for tiny models)", DefaultValueFactory = _ => 1 };

    public static Command Build(TextWriter output, TextWriter error)
    {
        var model = ModelOption();
        var host = new Option<string>("--host") { Description = "address to listen on", DefaultValueFactory = _ => "127.0.0.1" };
        var port = new Option<int>("--port") { Description = "gRPC port (0 picks a free one)", DefaultValueFactory = _ => 50051 };
        var httpPort = new Option<int>("--http-port") { Description = "OpenAI-compatible HTTP port (0 picks a free one, -1 turns it off)", DefaultValueFactory = _ => 8080 };
        var provider = ProviderOption();
        var threads = IntraOpThreadsOption();
        var defaults = new EngineOptions();
        var rows = new Option<int>("--max-batch-rows") { Description = "rows one decode step runs at most (= KV cache slots, each a full context)", DefaultValueFactory = _ => defaults.MaxBatchRows };
        var budget = new Option<long?>("--kv-token-budget") { Description = "tokens running rows may reserve together (prompt + max_tokens each); requests beyond it wait. Default: max-batch-rows × context" };
        var queued = new Option<int>("--max-queued-requests") { Description = "requests that may wait for a row; more get RESOURCE_EXHAUSTED", DefaultValueFactory = _ => defaults.MaxQueuedRequests };
        var queuedTokens = new Option<long>("--max-queued-tokens") { Description = "prompt + max_tokens of all waiting requests; more get RESOURCE_EXHAUSTED", DefaultValueFactory = _ => defaults.MaxQueuedTokens };
        var prefill = new Option<int>("--max-prefill-tokens-per-step") { Description = "prompt tokens prefilled between two decode steps (bounds the stall new arrivals cause)", DefaultValueFactory = _ => defaults.MaxPrefillTokensPerStep };
        var experiments = new Option<string?>("--experiments") { Description = "experiments config (YAML or JSON; docs/experiments.md), reloaded when it changes" };
        var experimentsDb = new Option<string?>("--experiments-db") { Description = "SQLite file where experiment figures persist (default: experiments.db in the working directory)" };
        var logFormat = new Option<string>("--log-format") { Description = "text, or json (one object per line, with the request id)", DefaultValueFactory = _ => "text" };
        var logPrompts = new Option<bool>("--log-prompts") { Description = "include prompt text in the request log lines (off by default)" };
        var drain = new Option<int>("--drain-seconds") { Description = "on SIGTERM, how long in-flight streams may finish before they are ended", DefaultValueFactory = _ => 30 };
        var maxTokens = new Option<int>("--default-max-tokens") { Description = "max_tokens for requests that leave it unset", DefaultValueFactory = _ => defaults.DefaultMaxTokens };
        var command = new Command("serve", "Serve a model folder over gRPC (featureflow.v1.Inference, grpc.health.v1.Health, reflection; cleartext HTTP/2).")
        {
            model, host, port, httpPort, provider, threads, rows, budget, queued, queuedTokens, prefill, maxTokens, experiments, experimentsDb, drain, logFormat, logPrompts,
        };
        var security = new ServeSecurityFlags(command);
        var config = new Option<string?>("--config") { Description = $"settings file (JSON; keys are flag names without dashes; default {ServeConfiguration.DefaultFile} if present)" };
        var printConfig = new Option<bool>("--print-config") { Description = "print the effective settings and where each came from (secrets redacted), then exit" };
        command.Options.Add(config);
        command.Options.Add(printConfig);
        command.SetAction((given, ct) => CliApp.Guard(error, async () =>
        {
            // Environment variables and the settings file become flags, checked by the same parsers.
            var (args, settings) = ServeConfiguration.Merge(command, given, given.GetValue(config));
            var parse = command.Parse(args);
            if (parse.Errors.Count > 0)
            {
                var outside = settings.Where(s => s.Source is not "flag" and not "default").Select(s => $"{s.Name} = {s.Value} ({s.Source})");
                throw new ArgumentException(string.Join("; ", parse.Errors.Select(e => e.Message))
                    + (outside.Any() ? $" [settings from outside the command line: {string.Join(", ", outside)}]" : ""));
            }
            if (given.GetValue(printConfig))
            {
                await output.WriteLineAsync(ServeConfiguration.Print(settings));
                return 0;
            }
            var options = new ServerOptions
            {
                ModelDirectory = parse.GetValue(model)!,
                Host = parse.GetValue(host)!,
                Port = parse.GetValue(port),
                HttpPort = parse.GetValue(httpPort) is var h && h >= 0 ? h : null,
                ExperimentsConfig = parse.GetValue(experiments),
                DrainSeconds = parse.GetValue(drain),
                LogFormat = parse.GetValue(logFormat)!,
                LogPrompts = parse.GetValue(logPrompts),
                ExperimentsDatabase = parse.GetValue(experimentsDb),
                Engine = new EngineOptions
                {
                    ExecutionProvider = parse.GetValue(provider),
                    IntraOpThreads = parse.GetValue(threads),
                    MaxBatchRows = parse.GetValue(rows),
                    KvTokenBudget = parse.GetValue(budget),
                    MaxQueuedRequests = parse.GetValue(queued),
                    MaxQueuedTokens = parse.GetValue(queuedTokens),
                    MaxPrefillTokensPerStep = parse.GetValue(prefill),
                    DefaultMaxTokens = parse.GetValue(maxTokens),
                },
            };
            await using var server = ServerHost.Create(security.Apply(parse, options));
            await server.StartAsync(ct);
            await server.WaitForShutdownAsync(ct);
            return 0;
        }));
        return command;
    }
}
