using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using FeatureFlow.Api.V1;
using Grpc.Core;
using Spectre.Console;

namespace FeatureFlow.Cli;

/// <summary>
/// <c>featureflow compare</c>: one prompt and seed through several steering arms of a running server, shown side by
/// side as they stream (one column per arm), then the per-arm summary.
/// </summary>
public static class CompareCommand
{
    public static Command Build(TextWriter output, TextWriter error)
    {
        var prompt = new Option<string>("--prompt") { Description = "prompt text (BOS is added)", DefaultValueFactory = _ => "" };
        var pack = new Option<string?>("--pack") { Description = "sweep this pack over --strengths" };
        var strengths = new Option<string?>("--strengths") { Description = "comma-separated strengths for --pack, e.g. 0,0.5,1,2 (0 is the unsteered model)" };
        var arms = new Option<string[]>("--arm") { Description = "an arm as featureflow.v1.SteeringSpec JSON, inline or a file; {} is unsteered (repeatable, before the sweep)" };
        var watch = new Option<string[]>("--watch") { Description = "report this SAE feature's mean activation per arm: HOOK/INDEX, e.g. blocks.2.hook_resid_post/415 (repeatable)" };
        var maxTokens = new Option<int?>("--max-tokens") { Description = "tokens per arm (default: the server's)" };
        var temperature = new Option<float?>("--temperature") { Description = "0 is greedy (default 1.0)" };
        var topP = new Option<float?>("--top-p") { Description = "nucleus mass in (0, 1]" };
        var topK = new Option<int?>("--top-k") { Description = "keep the k most likely tokens" };
        var seed = new Option<ulong?>("--seed") { Description = "one seed for every arm (default: random, printed in the summary)" };
        var json = new Option<bool>("--json") { Description = "print one JSON object {arms: [{label, text, token_ids, summary}]} at the end" };
        var server = GenerateCommand.ServerOption();
        var key = ServerClient.KeyOption();
        var command = new Command("compare", "Run steering arms side by side on one prompt and seed (a pack at several strengths, and/or explicit arms).")
        {
            prompt, pack, strengths, arms, watch, maxTokens, temperature, topP, topK, seed, json, server, key,
        };
        command.SetAction((parse, ct) => CliApp.Guard(error, async () =>
        {
            var request = new CompareRequest { Prompt = parse.GetValue(prompt)! };
            if (parse.GetValue(maxTokens) is { } m) request.MaxTokens = m;
            if (parse.GetValue(temperature) is { } t) request.Temperature = t;
            if (parse.GetValue(topP) is { } p) request.TopP = p;
            if (parse.GetValue(topK) is { } k) request.TopK = k;
            if (parse.GetValue(seed) is { } s) request.Seed = s;
            foreach (var arm in parse.GetValue(arms) ?? []) request.Arms.Add(GenerateCommand.ParseSteering(arm));
            if (parse.GetValue(pack) is { } name)
            {
                request.Sweep = new StrengthSweep { Pack = new PackRef { Name = name } };
                request.Sweep.Strengths.AddRange(ParseStrengths(parse.GetValue(strengths) ?? "0,1"));
            }
            else if (parse.GetValue(strengths) is not null) throw new FormatException("--strengths needs --pack");
            foreach (var w in parse.GetValue(watch) ?? []) request.Watch.Add(ParseFeature(w));

            using var client = new ServerClient(parse.GetValue(server)!, parse.GetValue(key));
            using var call = client.Inference.Compare(request, cancellationToken: ct);
            var live = !parse.GetValue(json) && !Console.IsOutputRedirected;
            var result = live ? await ShowLive(call.ResponseStream, ct) : await Collect(call.ResponseStream, ct);
            if (parse.GetValue(json)) await output.WriteLineAsync(Json(result));
            else
            {
                var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(output) });
                if (!live) console.Write(Columns(result));
                console.Write(Summary(result));
            }
            return 0;
        }));
        return command;
    }

    private sealed class Result
    {
        public SortedDictionary<int, (System.Text.StringBuilder Text, List<int> Ids)> Arms { get; } = [];
        public List<ArmSummary> Summaries { get; } = [];

        public void Add(CompareResponse m)
        {
            if (m.Summary is { } s)
            {
                Summaries.Add(s);
                return;
            }
            if (!Arms.TryGetValue(m.Arm, out var arm)) Arms[m.Arm] = arm = (new System.Text.StringBuilder(), []);
            arm.Text.Append(m.Update.Text);
            arm.Ids.AddRange(m.Update.TokenIds);
        }

        public string Label(int arm) => Summaries.FirstOrDefault(s => s.Arm == arm)?.Label ?? $"arm {arm}";
    }

    private static async Task<Result> Collect(IAsyncStreamReader<CompareResponse> stream, CancellationToken ct)
    {
        var result = new Result();
        await foreach (var m in stream.ReadAllAsync(ct)) result.Add(m);
        return result;
    }

    /// <summary>Redraws the columns as tokens arrive (a terminal only).</summary>
    private static async Task<Result> ShowLive(IAsyncStreamReader<CompareResponse> stream, CancellationToken ct)
    {
        var result = new Result();
        await AnsiConsole.Live(Columns(result)).StartAsync(async context =>
        {
            await foreach (var m in stream.ReadAllAsync(ct))
            {
                result.Add(m);
                context.UpdateTarget(Columns(result));
            }
        });
        return result;
    }

    private static Table Columns(Result result)
    {
        var table = new Table().Border(TableBorder.Rounded);
        foreach (var arm in result.Arms.Keys) table.AddColumn(new TableColumn(Markup.Escape(result.Label(arm))));
        if (result.Arms.Count > 0) table.AddRow(result.Arms.Values.Select(a => new Text(a.Text.ToString())).ToArray());
        return table;
    }

    private static Table Summary(Result result)
    {
        var table = new Table().Border(TableBorder.Simple)
            .AddColumn("arm").AddColumn("tokens").AddColumn("finish").AddColumn("mean log p").AddColumn("perplexity (unsteered)");
        var watched = result.Summaries.FirstOrDefault()?.Watched ?? [];
        foreach (var w in watched) table.AddColumn($"{w.Hook}/{w.Index}");
        foreach (var s in result.Summaries.OrderBy(s => s.Arm))
            table.AddRow([Markup.Escape(s.Label), s.CompletionTokens.ToString(CultureInfo.InvariantCulture), s.FinishReason.ToString(),
                s.MeanLogprob.ToString("F3", CultureInfo.InvariantCulture), s.PerplexityUnsteered.ToString("F2", CultureInfo.InvariantCulture),
                .. s.Watched.Select(w => w.MeanActivation.ToString("F3", CultureInfo.InvariantCulture))]);
        if (result.Summaries.FirstOrDefault() is { } first) table.Caption($"seed {first.Seed}");
        return table;
    }

    private static string Json(Result result) => JsonSerializer.Serialize(new
    {
        arms = result.Summaries.OrderBy(s => s.Arm).Select(s => new
        {
            label = s.Label,
            text = result.Arms.TryGetValue(s.Arm, out var a) ? a.Text.ToString() : "",
            token_ids = result.Arms.TryGetValue(s.Arm, out var b) ? b.Ids : [],
            summary = JsonDocument.Parse(Google.Protobuf.JsonFormatter.Default.Format(s)).RootElement,
        }),
    });

    private static IEnumerable<float> ParseStrengths(string text) =>
        text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(s => float.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) ? v : throw new FormatException($"--strengths: '{s}' is not a number"));

    private static FeatureRef ParseFeature(string text)
    {
        var slash = text.LastIndexOf('/');
        return slash > 0 && int.TryParse(text[(slash + 1)..], NumberStyles.Integer, CultureInfo.InvariantCulture, out var index)
            ? new FeatureRef { Hook = text[..slash], Index = index }
            : throw new FormatException($"--watch: '{text}' is not HOOK/INDEX (e.g. blocks.2.hook_resid_post/415)");
    }
}
