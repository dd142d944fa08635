using System.Globalization;
using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using FeatureFlow.Api.V1;
using FeatureFlow.Engine;
using Grpc.Core;
using Grpc.Net.Client;

namespace FeatureFlow.Server.Tests;

/// <summary>
/// The browser pages in Debian's chromium, driven by playwright-core (tests/browser/playground.test.mjs). Needs
/// <c>apt-get install -y chromium</c> and <c>npm ci --prefix tests/browser</c> (.ci/run does both); fails, never
/// skips, without them. Screenshots go to artifacts/browser/.
/// </summary>
public static class Browser
{
    public static string Folder => Path.Combine(RepoPaths.Root, "tests", "browser");
    public static string Screenshots => Path.Combine(RepoPaths.Root, "artifacts", "browser");

    public static string Chromium =>
        Environment.GetEnvironmentVariable("FEATUREFLOW_CHROMIUM") is { Length: > 0 } path ? path : "/usr/bin/chromium";

    /// <summary>Runs the browser script against a server and returns the JSON object it printed.</summary>
    public static async Task<JsonElement> Run(params string[] arguments)
    {
        Assert.True(File.Exists(Chromium),
            $"chromium is not installed at {Chromium}: run `apt-get install -y chromium` (as .ci/run does) or set FEATUREFLOW_CHROMIUM to a Chromium binary");
        Assert.True(Directory.Exists(Path.Combine(Folder, "node_modules", "playwright-core")),
            $"playwright-core is not installed: run `npm ci --prefix {Path.Combine("tests", "browser")}` (as .ci/run does)");
        return await ServerTestKit.RunNodeScriptAsync(Path.Combine(Folder, "playground.test.mjs"), [.. arguments, "--out", Screenshots],
            TimeSpan.FromMinutes(4), new Dictionary<string, string> { ["FEATUREFLOW_CHROMIUM"] = Chromium });
    }

    public static string Text(this JsonElement e, string property) => e.GetProperty(property).GetString()!;

    /// <summary>The page's number format (api.js fmt): fixed digits, U+2212 for minus.</summary>
    public static string Fmt(double value, int digits = 3) =>
        double.IsNaN(value) ? "—" : value.ToString("F" + digits, CultureInfo.InvariantCulture).Replace('-', '−');
}

/// <summary>A server with an HTTP port and an experiments config, figures in a temp folder.</summary>
public sealed class BrowserFixture : IAsyncLifetime
{
    public string Folder { get; } = Directory.CreateTempSubdirectory("featureflow-browser-").FullName;
    public ServerHost Host { get; private set; } = null!;
    public GrpcChannel Channel { get; private set; } = null!;
    public Inference.InferenceClient Client => new(Channel);
    public HttpClient Http { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        var config = Path.Combine(Folder, "experiments.yaml");
        await File.WriteAllTextAsync(config, ExperimentFixture.Config);
        Host = ServerHost.Create(new ServerOptions
        {
            ModelDirectory = RepoPaths.Stories260kModel, Port = 0, HttpPort = 0,
            ExperimentsConfig = config, ExperimentsDatabase = Path.Combine(Folder, "figures.db"),
            Engine = new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu },
        });
        await Host.StartAsync();
        Channel = GrpcChannel.ForAddress(Host.Address);
        Http = new HttpClient { BaseAddress = new Uri(Host.HttpAddress!) };
    }

    public async Task DisposeAsync()
    {
        Http.Dispose();
        Channel.Dispose();
        await Host.DisposeAsync();
        Directory.Delete(Folder, recursive: true);
    }
}

public class BrowserTests(BrowserFixture f) : IClassFixture<BrowserFixture>
{
    /// <summary>Outcomes over gRPC (RecordOutcome has no HTTP route): off {1, 2, 2}, half {4, 2, 3}.</summary>
    private async Task RecordOutcomes()
    {
        var subjects = new Dictionary<string, string>();
        for (var i = 0; subjects.Count < 2 && i < 64; i++)
        {
            using var call = f.Client.Generate(new GenerateRequest
            {
                Prompt = "Once upon a time", MaxTokens = 6, Seed = 1, Experiment = "happy-strength", SubjectId = $"subject-{i}",
            });
            await foreach (var r in call.ResponseStream.ReadAllAsync())
                if (r.ExperimentArm is { Length: > 0 } arm) subjects.TryAdd(arm, $"subject-{i}");
        }
        Assert.Equal(2, subjects.Count);
        foreach (var (arm, values) in new[] { ("off", new[] { 1.0, 2, 2 }), ("half", new[] { 4.0, 2, 3 }) })
            foreach (var v in values)
                await f.Client.RecordOutcomeAsync(new RecordOutcomeRequest { Experiment = "happy-strength", SubjectId = subjects[arm], Name = "score", Value = v });
    }

    [Fact]
    public async Task The_playground_streams_three_arms_the_unsteered_one_equal_to_a_completion_and_the_dashboard_shows_the_api_s_figures()
    {
        await RecordOutcomes();
        var figures = await f.Client.ListExperimentsAsync(new ListExperimentsRequest());

        var seen = await Browser.Run("--url", f.Host.HttpAddress!, "--mode", "pages");

        // Three columns, streamed by one Compare with seed 3: the unsteered one is exactly the plain completion.
        var columns = seen.GetProperty("columns").EnumerateArray().ToArray();
        Assert.Equal(3, columns.Length);
        Assert.Equal(["Arm 0: unsteered", "Arm 1: happy × 1", "Arm 2: happy × 2"], columns.Select(c => c.Text("label")));
        var completion = await f.Http.PostAsJsonAsync("/v1/completions", new JsonObject
        {
            ["prompt"] = "Once upon a time", ["max_tokens"] = 48, ["temperature"] = 1, ["top_p"] = 1, ["seed"] = 3,
        });
        completion.EnsureSuccessStatusCode();
        var unsteered = (string)(await completion.Content.ReadFromJsonAsync<JsonObject>())!["choices"]![0]!["text"]!;
        Assert.Equal(unsteered, columns[0].Text("text"));
        Assert.NotEqual(unsteered, columns[1].Text("text"));
        Assert.NotEqual(unsteered, columns[2].Text("text"));
        Assert.NotEqual(columns[1].Text("text"), columns[2].Text("text"));
        foreach (var c in columns)
        {
            Assert.Equal("48", c.GetProperty("summary").Text("tokens"));
            Assert.True(c.GetProperty("spans").GetInt32() > 0);
        }
        // The steered arms carry the happy seed feature (3/res/145, the shade): some tokens shaded, a higher mean.
        Assert.True(columns[2].GetProperty("shaded").GetInt32() > 0);
        double Mean(JsonElement c) => double.Parse(c.GetProperty("summary").Text("mean 3/res/145").Replace('−', '-'), CultureInfo.InvariantCulture);
        Assert.True(Mean(columns[2]) > Mean(columns[0]), $"{Mean(columns[2])} vs {Mean(columns[0])}");

        // A hovered and a focused token show their top features (read-out top-K 5).
        Assert.Equal(5, seen.GetProperty("hover").GetProperty("features").GetArrayLength());
        Assert.Contains("top at 3/res", seen.GetProperty("hover").Text("tip"));
        var focus = seen.GetProperty("focus");
        Assert.Equal("token-tip", focus.Text("describedBy"));
        Assert.Equal(focus.Text("piece"), focus.Text("tipFor"));
        Assert.Equal(5, focus.GetProperty("features").GetInt32());

        // The reproduce box: the curl body replays to the same texts, the CLI command names every arm and the seed.
        Assert.Equal(columns.Select(c => c.Text("text")), seen.GetProperty("replay").EnumerateArray().Select(t => t.GetString()));
        var cli = seen.Text("cli");
        Assert.Contains("featureflow compare", cli);
        Assert.Contains("--seed 3", cli);
        Assert.Contains("""--arm '{"terms":[{"pack":{"name":"happy","strength":2}}]}'""", cli);

        // Pack search by theme word, seed feature and description; the flow graph of a multi-block pack.
        var search = seen.GetProperty("search");
        foreach (var by in new[] { "smile", "seed", "description" })
            Assert.Equal(["happy"], search.GetProperty(by).EnumerateArray().Select(p => p.GetString()));
        Assert.Equal(0, search.GetProperty("none").GetArrayLength());
        var flow = seen.GetProperty("flow");
        Assert.Equal(4, flow.GetProperty("nodes").GetInt32());
        Assert.Equal(3, flow.GetProperty("edges").GetInt32());
        Assert.Contains(flow.GetProperty("rows").EnumerateArray(), r => r[0].GetString() == "2/res/304" && r[3].GetString() == "seed");

        // Phone width: the arm columns stack and nothing scrolls sideways.
        var phone = seen.GetProperty("phone");
        Assert.True(phone.GetProperty("stacked").GetBoolean());
        Assert.True(phone.GetProperty("scrollWidth").GetInt32() <= 390, $"scroll width {phone.GetProperty("scrollWidth")}");

        // The dashboard shows what the API reports: requests per arm, and each outcome's n, mean and interval.
        var dashboard = seen.GetProperty("experiments").EnumerateArray().Single();
        var experiment = figures.Experiments.Single();
        Assert.Equal(experiment.Name, dashboard.Text("name"));
        foreach (var arm in experiment.Arms)
        {
            var shown = dashboard.GetProperty("armFigures").GetProperty(arm.Name);
            Assert.Equal(arm.Requests.ToString(CultureInfo.InvariantCulture), shown.GetProperty("requests").Text("text"));
            var score = arm.Outcomes.Single(o => o.Name == "score");
            var row = dashboard.GetProperty("outcomes").GetProperty("score").GetProperty("arms").GetProperty(arm.Name);
            Assert.Equal(score.N.ToString(CultureInfo.InvariantCulture), row.GetProperty("n").Text("text"));
            Assert.Equal(score.Mean, double.Parse(row.GetProperty("mean").Text("value"), CultureInfo.InvariantCulture));
            Assert.Equal(Browser.Fmt(score.Mean), row.GetProperty("mean").Text("text"));
            Assert.Equal($"[{Browser.Fmt(score.CiLow)}, {Browser.Fmt(score.CiHigh)}]", row.GetProperty("interval").Text("text"));
            if (score.HasDifference)
            {
                Assert.StartsWith((score.Difference > 0 ? "+" : "") + Browser.Fmt(score.Difference), row.GetProperty("difference").Text("text"));
                Assert.Equal(Browser.Fmt(score.PValue), row.GetProperty("p").Text("text"));
            }
            else Assert.Equal("control", row.GetProperty("difference").Text("text"));
        }
        Assert.Equal(2, dashboard.GetProperty("outcomes").GetProperty("score").GetProperty("chart").GetProperty("circles").GetInt32());
        // And it refreshes: a request served in the experiment shows up without a reload.
        var live = seen.GetProperty("live");
        Assert.True(live.GetProperty("after").GetInt64() > live.GetProperty("before").GetInt64());

        foreach (var name in new[] { "playground", "playground-tooltip", "playground-phone", "experiments" })
            Assert.True(new FileInfo(Path.Combine(Browser.Screenshots, name + ".png")).Length > 10_000, $"screenshot {name}.png");
    }
}

public class BrowserAuthTests
{
    private const string Key = "browser-test-key-0123456789", WrongKey = "not-the-key-0000000000000";

    [Fact]
    public async Task With_keys_the_page_shows_the_server_s_401_and_works_once_a_key_is_entered()
    {
        var folder = Directory.CreateTempSubdirectory("featureflow-browser-keys-").FullName;
        try
        {
            var keys = Path.Combine(folder, "keys.txt");
            await File.WriteAllTextAsync(keys, Key + "\n");
            await using var host = ServerHost.Create(new ServerOptions
            {
                ModelDirectory = RepoPaths.Stories260kModel, Port = 0, HttpPort = 0, ApiKeysFile = keys,
                WatchPacks = false,
                Engine = new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu },
            });
            await host.StartAsync();
            using var http = new HttpClient { BaseAddress = new Uri(host.HttpAddress!) };
            // The page itself is open; the API call it makes is not.
            Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("/")).StatusCode);
            var refused = await http.GetAsync("/v1/featureflow/model");
            Assert.Equal(HttpStatusCode.Unauthorized, refused.StatusCode);
            var missing = (string)(await refused.Content.ReadFromJsonAsync<JsonObject>())!["error"]!["message"]!;
            using var wrong = new HttpRequestMessage(HttpMethod.Get, "/v1/featureflow/model") { Headers = { { "authorization", "Bearer " + WrongKey } } };
            var wrongMessage = (string)(await (await http.SendAsync(wrong)).Content.ReadFromJsonAsync<JsonObject>())!["error"]!["message"]!;

            var seen = await Browser.Run("--url", host.HttpAddress!, "--mode", "auth", "--key", Key, "--wrong-key", WrongKey);

            var without = seen.GetProperty("withoutKey");
            Assert.Equal($"The server refused the request (401 Unauthorized): {missing}", without.Text("message"));
            Assert.Equal("key-input", without.Text("focused"));
            Assert.Equal($"The server refused the request (401 Unauthorized): {wrongMessage}", seen.GetProperty("wrongKey").Text("message"));
            var with = seen.GetProperty("withKey");
            Assert.Contains("stories260k", with.Text("modelLine"));
            Assert.True(with.GetProperty("panelHidden").GetBoolean());
            Assert.Equal(6, with.GetProperty("packs").GetInt32());
            Assert.Equal(Key, with.Text("session"));
            Assert.Equal(0, with.GetProperty("local").GetInt32());
            Assert.All(with.GetProperty("columns").EnumerateArray(), c => Assert.False(string.IsNullOrEmpty(c.GetString())));
            Assert.True(seen.GetProperty("dashboard").GetProperty("keyPanelHidden").GetBoolean());
            Assert.Equal("", seen.GetProperty("dashboard").Text("error"));
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }
}

/// <summary>The pages as files: content types, revalidation, no way out of the embedded set, nothing from outside.</summary>
public class PlaygroundAssetTests(HttpServerFixture f) : IClassFixture<HttpServerFixture>
{
    [Theory]
    [InlineData("/", "text/html")]
    [InlineData("/experiments", "text/html")]
    [InlineData("/ui/style.css", "text/css")]
    [InlineData("/ui/playground.js", "text/javascript")]
    [InlineData("/ui/experiments.js", "text/javascript")]
    [InlineData("/ui/icon.svg", "image/svg+xml")]
    public async Task Pages_and_assets_are_served_with_their_type_and_revalidated_by_etag(string path, string type)
    {
        using var response = await f.Http.GetAsync(path);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal(type, response.Content.Headers.ContentType!.MediaType);
        Assert.True(response.Headers.CacheControl!.NoCache);
        Assert.Contains("default-src 'none'", response.Headers.GetValues("Content-Security-Policy").Single());
        var etag = response.Headers.ETag!;
        using var again = new HttpRequestMessage(HttpMethod.Get, path) { Headers = { IfNoneMatch = { etag } } };
        using var cached = await f.Http.SendAsync(again);
        Assert.Equal(HttpStatusCode.NotModified, cached.StatusCode);
        using var head = await f.Http.SendAsync(new HttpRequestMessage(HttpMethod.Head, path));
        Assert.Equal(HttpStatusCode.OK, head.StatusCode);
    }

    [Theory]
    [InlineData("/ui/nope.js")]
    [InlineData("/ui/../index.html")]
    [InlineData("/ui/%2e%2e/%2e%2e/FeatureFlow.Server.csproj")]
    [InlineData("/index.html")]
    public async Task Anything_but_an_embedded_asset_is_404(string path)
    {
        using var response = await f.Http.GetAsync(path);
        Assert.Equal(HttpStatusCode.NotFound, response.StatusCode);
    }

    [Fact]
    public void No_asset_loads_anything_from_outside_the_server()
    {
        Assert.Contains("index.html", Http.Playground.Files);
        var assembly = typeof(Http.Playground).Assembly;
        foreach (var name in assembly.GetManifestResourceNames().Where(n => n.StartsWith("wwwroot/", StringComparison.Ordinal)))
        {
            using var reader = new StreamReader(assembly.GetManifestResourceStream(name)!, Encoding.UTF8);
            var text = reader.ReadToEnd().Replace("http://www.w3.org/", "", StringComparison.Ordinal);
            Assert.DoesNotContain("http://", text);
            Assert.DoesNotContain("https://", text);
            Assert.DoesNotContain("@import", text);
            Assert.DoesNotMatch("(src|href)=\"//", text);
        }
    }
}
