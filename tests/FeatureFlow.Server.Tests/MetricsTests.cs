using System.Globalization;
using System.Net.Http.Json;
using System.Text;
using System.Text.RegularExpressions;
using FeatureFlow.Api.V1;
using Grpc.Core;

namespace FeatureFlow.Server.Tests;

/// <summary>
/// A strict reader of the Prometheus text exposition format (version 0.0.4): every line must be a HELP, a TYPE, a
/// sample or blank, names and labels must be well formed, and every sample must belong to a declared family.
/// </summary>
public static partial class PrometheusText
{
    public sealed record Sample(string Name, IReadOnlyDictionary<string, string> Labels, double Value);

    public static IReadOnlyList<Sample> Parse(string text)
    {
        var types = new Dictionary<string, string>();
        var samples = new List<Sample>();
        foreach (var (line, number) in text.Split('\n').Select((l, i) => (l, i + 1)))
        {
            if (line.Length == 0) continue;
            if (line.StartsWith("# HELP ")) { Assert.Matches(HelpLine(), line); continue; }
            if (line.StartsWith("# TYPE "))
            {
                var m = TypeLine().Match(line);
                Assert.True(m.Success, $"line {number}: malformed TYPE: {line}");
                Assert.True(types.TryAdd(m.Groups[1].Value, m.Groups[2].Value), $"line {number}: second TYPE for {m.Groups[1].Value}");
                continue;
            }
            Assert.False(line.StartsWith('#'), $"line {number}: unknown comment {line}");
            var s = SampleLine().Match(line);
            Assert.True(s.Success, $"line {number}: not a sample: {line}");
            var name = s.Groups["name"].Value;
            var family = types.Keys.FirstOrDefault(t => name == t || (name.StartsWith(t + "_") && types[t] is "histogram" or "summary"));
            Assert.True(family is not null, $"line {number}: {name} has no TYPE");
            var labels = new Dictionary<string, string>();
            if (s.Groups["labels"].Success && s.Groups["labels"].Value.Length > 0)
                foreach (Match l in LabelPair().Matches(s.Groups["labels"].Value)) labels[l.Groups[1].Value] = l.Groups[2].Value;
            var value = s.Groups["value"].Value switch
            {
                "+Inf" => double.PositiveInfinity,
                "-Inf" => double.NegativeInfinity,
                "NaN" => double.NaN,
                var v => double.Parse(v, NumberStyles.Float, CultureInfo.InvariantCulture),
            };
            samples.Add(new Sample(name, labels, value));
        }
        return samples;
    }

    public static double Value(this IReadOnlyList<Sample> samples, string name, params (string Key, string Value)[] labels) =>
        samples.Where(s => s.Name == name && labels.All(l => s.Labels.TryGetValue(l.Key, out var v) && v == l.Value)).Sum(s => s.Value);

    [GeneratedRegex(@"^# HELP [a-zA-Z_:][a-zA-Z0-9_:]* .*$")] private static partial Regex HelpLine();
    [GeneratedRegex(@"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$")] private static partial Regex TypeLine();
    [GeneratedRegex(@"^(?<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?<labels>([a-zA-Z_][a-zA-Z0-9_]*=""([^""\\]|\\.)*"",?)*)\})? (?<value>[-+]?(\d+(\.\d*)?([eE][-+]?\d+)?|\.\d+([eE][-+]?\d+)?|Inf|NaN))( -?\d+)?$")]
    private static partial Regex SampleLine();
    [GeneratedRegex(@"([a-zA-Z_][a-zA-Z0-9_]*)=""((?:[^""\\]|\\.)*)""")] private static partial Regex LabelPair();
}

public class MetricsTests(HttpServerFixture f) : IClassFixture<HttpServerFixture>
{
    private async Task<IReadOnlyList<PrometheusText.Sample>> Scrape() => PrometheusText.Parse(await f.Http.GetStringAsync("/metrics"));

    [Fact]
    public async Task Metrics_parse_as_prometheus_text_and_move_as_requests_are_served()
    {
        var before = await Scrape();
        using (var call = f.Client.Generate(new GenerateRequest
        {
            Prompt = "Once upon a time", MaxTokens = 10, Temperature = 0,
            Steering = new Api.V1.SteeringSpec { Terms = { new Api.V1.SteeringTerm { Pack = new PackRef { Name = "happy" } } } },
        }))
            await foreach (var _ in call.ResponseStream.ReadAllAsync()) { }
        await Assert.ThrowsAsync<RpcException>(async () =>
        {
            using var bad = f.Client.Generate(new GenerateRequest { MaxTokens = -1 });
            await foreach (var _ in bad.ResponseStream.ReadAllAsync()) { }
        });
        await f.Http.PostAsync("/v1/completions", new StringContent("""{"prompt":"Once upon a time","max_tokens":5,"temperature":0}""", Encoding.UTF8, "application/json"));
        var after = await Scrape();

        double Delta(string name, params (string, string)[] labels) => after.Value(name, labels) - before.Value(name, labels);
        Assert.Equal(1, Delta("featureflow_requests_total", ("api", "grpc"), ("method", "Generate"), ("status", "OK")));
        Assert.Equal(1, Delta("featureflow_requests_total", ("api", "grpc"), ("method", "Generate"), ("status", "InvalidArgument")));
        Assert.Equal(1, Delta("featureflow_requests_total", ("api", "http"), ("method", "/v1/completions"), ("status", "200")));
        Assert.Equal(15, Delta("featureflow_generated_tokens_total"));
        Assert.Equal(1, Delta("featureflow_pack_requests_total", ("pack", "happy")));
        Assert.Equal(2, Delta("featureflow_time_to_first_token_seconds_count"));
        Assert.Equal(13, Delta("featureflow_inter_token_latency_seconds_count"));
        Assert.True(Delta("featureflow_decode_steps") > 0);
        // The unsteered completion runs alone: its decode steps need no hooks.
        Assert.True(Delta("featureflow_plain_decode_steps") > 0);
        // The happy pack steers (add vectors alone): its steps run the hooked graph.
        Assert.True(Delta("featureflow_decode_steps") > Delta("featureflow_plain_decode_steps"));
        Assert.Equal(0, after.Value("featureflow_running_rows"));
        Assert.Equal(0, after.Value("featureflow_queue_depth"));
        Assert.True(after.Value("featureflow_kv_token_budget") > 0);
    }

    [Fact]
    public void The_parser_refuses_what_is_not_prometheus_text()
    {
        Assert.ThrowsAny<Exception>(() => PrometheusText.Parse("featureflow_x 1\n")); // no TYPE
        Assert.ThrowsAny<Exception>(() => PrometheusText.Parse("# TYPE a counter\na{b=c} 1\n")); // unquoted label
        Assert.ThrowsAny<Exception>(() => PrometheusText.Parse("# TYPE a counter\na one\n"));
        Assert.Single(PrometheusText.Parse("# HELP a h\n# TYPE a counter\na{b=\"c\"} 1.5e3\n"));
    }
}
