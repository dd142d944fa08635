using System.CommandLine;
using System.Globalization;
using FeatureFlow.Api.V1;
using Google.Protobuf;
using Spectre.Console;

namespace FeatureFlow.Cli;

/// <summary><c>featureflow experiments list|show NAME</c>: a running server's experiments and their live per-arm figures.</summary>
public static class ExperimentsCommand
{
    public static Command Build(TextWriter output, TextWriter error)
    {
        var json = new Option<bool>("--json") { Description = "print the server's answer as JSON" };
        var server = GenerateCommand.ServerOption();
        var key = ServerClient.KeyOption();
        var list = new Command("list", "Each configured experiment with its arms, weights and request counts.") { json, server, key };
        list.SetAction((parse, ct) => CliApp.Guard(error, async () =>
        {
            using var client = new ServerClient(parse.GetValue(server)!, parse.GetValue(key));
            var reply = await client.Inference.ListExperimentsAsync(new ListExperimentsRequest(), cancellationToken: ct);
            if (parse.GetValue(json)) await output.WriteLineAsync(JsonFormatter.Default.Format(reply));
            else
            {
                var table = new Table().Border(TableBorder.Simple).AddColumn("experiment").AddColumn("arms (weight: requests)").AddColumn("control");
                foreach (var e in reply.Experiments)
                    table.AddRow(Markup.Escape(e.Name), Markup.Escape(string.Join(", ", e.Arms.Select(a => $"{a.Name} ({a.Weight:0.##}: {a.Requests})"))), Markup.Escape(e.Control));
                Terminal(output).Write(table.Caption($"config version {reply.ConfigVersion}"));
            }
            return 0;
        }));

        var name = new Argument<string>("NAME") { Description = "the experiment" };
        var show = new Command("show", "One experiment's per-arm figures: requests, tokens, latency, and each outcome's mean, interval and difference from control.")
        {
            name, json, server, key,
        };
        show.SetAction((parse, ct) => CliApp.Guard(error, async () =>
        {
            using var client = new ServerClient(parse.GetValue(server)!, parse.GetValue(key));
            var e = await client.Inference.GetExperimentAsync(new GetExperimentRequest { Name = parse.GetValue(name)! }, cancellationToken: ct);
            if (parse.GetValue(json)) await output.WriteLineAsync(JsonFormatter.Default.Format(e));
            else Terminal(output).Write(Figures(e));
            return 0;
        }));
        return new Command("experiments", "Experiments on a running server (configured with serve --experiments).") { list, show };
    }

    private static IAnsiConsole Terminal(TextWriter output)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(output) });
        // Piped output has no width of its own; the figures table needs more than the default 80 columns.
        if (System.Console.IsOutputRedirected) console.Profile.Width = 160;
        return console;
    }

    private static Table Figures(ExperimentInfo e)
    {
        static string F(double v) => v.ToString("0.###", CultureInfo.InvariantCulture);
        var table = new Table().Border(TableBorder.Simple)
            .AddColumn("arm").AddColumn("weight").AddColumn("requests").AddColumn("tokens").AddColumn("latency ms")
            .AddColumn("outcome").AddColumn("n").AddColumn(Markup.Escape("mean [95% CI]")).AddColumn(Markup.Escape("vs control [95% CI]"))
            .AddColumn("p (Welch)");
        foreach (var arm in e.Arms)
        {
            var label = arm.Name == e.Control ? $"{arm.Name} (control)" : arm.Name;
            string[] head = [Markup.Escape(label), F(arm.Weight), arm.Requests.ToString(CultureInfo.InvariantCulture),
                arm.Tokens.ToString(CultureInfo.InvariantCulture), F(arm.MeanLatencyMs)];
            if (arm.Outcomes.Count == 0) table.AddRow([.. head, "", "", "", "", ""]);
            foreach (var (o, i) in arm.Outcomes.Select((o, i) => (o, i)))
                table.AddRow([.. i == 0 ? head : ["", "", "", "", ""], Markup.Escape(o.Name), o.N.ToString(CultureInfo.InvariantCulture),
                    Markup.Escape($"{F(o.Mean)} [{F(o.CiLow)}, {F(o.CiHigh)}]"),
                    o.HasDifference ? Markup.Escape($"{F(o.Difference)} [{F(o.DifferenceCiLow)}, {F(o.DifferenceCiHigh)}]") : "",
                    o.HasDifference ? F(o.PValue) : ""]);
        }
        return table.Caption($"{e.Name}: salt {e.Salt}, traffic {F(e.Traffic)}");
    }
}
