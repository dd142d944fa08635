using FeatureFlow.Experiments;

namespace FeatureFlow.Experiments.Tests;

public class ConfigTests
{
    private const string Example = """
        experiments:
          - name: happy-strength          # [a-z0-9][a-z0-9._-]{0,63}
            salt: "2026-11"
            traffic: 1.0
            control: off
            arms:
              - name: off
                weight: 1
                steering: {}
              - name: half
                weight: 1
                steering: {"terms": [{"pack": {"name": "happy", "strength": 0.5}}]}
        """;

    [Fact]
    public void Parses_the_documented_example()
    {
        var config = ExperimentConfig.Parse(Example, "experiments.yaml");
        var e = Assert.Single(config.Experiments).Value;
        Assert.Equal(("happy-strength", "2026-11", 1.0, "off"), (e.Name, e.Salt, e.Traffic, e.Control));
        Assert.Equal(["off", "half"], e.Arms.Select(a => a.Name));
        Assert.Equal(new ExperimentArm("off", 1, "{}"), e.Arms[0]);
        const string half = """{"terms":[{"pack":{"name":"happy","strength":0.5}}]}""";
        Assert.Equal(new ExperimentArm("half", 1, half), e.Arms[1]);
    }

    [Theory]
    [InlineData("yaml")]
    [InlineData("json")]
    public void The_examples_in_the_docs_parse(string language)
    {
        var doc = File.ReadAllText(Path.Combine(RepoPaths.Root, "docs", "experiments.md"));
        var start = doc.IndexOf($"```{language}\n", StringComparison.Ordinal) + language.Length + 4;
        var example = doc[start..doc.IndexOf("```", start, StringComparison.Ordinal)];
        var e = ExperimentConfig.Parse(example, $"docs/experiments.md ({language})").Experiments["happy-strength"];
        Assert.Equal("off", e.Control);
        Assert.Equal("""{"terms":[{"pack":{"name":"happy","strength":0.5}}]}""", e.Arms[1].SteeringJson);
    }

    [Fact]
    public void Json_parses_like_yaml()
    {
        const string json = """
            {"experiments": [{"name": "happy-strength", "salt": "2026-11", "traffic": 1.0, "control": "off",
              "arms": [{"name": "off", "weight": 1, "steering": {}},
                       {"name": "half", "weight": 1,
                        "steering": {"terms": [{"pack": {"name": "happy", "strength": 0.5}}]}}]}]}
            """;
        var fromJson = ExperimentConfig.Parse(json, "experiments.json").Experiments["happy-strength"];
        var fromYaml = ExperimentConfig.Parse(Example, "experiments.yaml").Experiments["happy-strength"];
        Assert.Equal(fromYaml.Arms, fromJson.Arms);
        Assert.Equal(fromYaml with { Arms = [] }, fromJson with { Arms = [] });
    }

    [Fact]
    public void Defaults_control_to_the_first_arm_traffic_to_one_and_missing_steering_to_empty()
    {
        const string yaml = """
            experiments:
              - name: e
                salt: s
                arms:
                  - {name: b, weight: 2}
                  - {name: a, weight: 1, steering: null}
            """;
        var e = ExperimentConfig.Parse(yaml, "x.yaml").Experiments["e"];
        Assert.Equal(("b", 1.0), (e.Control, e.Traffic));
        Assert.All(e.Arms, a => Assert.Equal("{}", a.SteeringJson));
    }

    [Fact]
    public void Steering_in_block_yaml_becomes_typed_compact_json()
    {
        const string yaml = """
            experiments:
              - name: e
                salt: s
                arms:
                  - name: a
                    weight: 1
                  - name: b
                    weight: 1
                    steering:
                      terms:
                        - hook: blocks.2.hook_resid_post
                          operation: STEERING_OPERATION_ADD
                          value: -8
                          normalize: true
                          tag: "0.5"
                          seed: 18446744073709551615
                          vector: {direction: [0.5, -1e-3, 2]}
            """;
        var json = ExperimentConfig.Parse(yaml, "x.yaml").Experiments["e"].Arms[1].SteeringJson;
        var expected =
            "{'terms':[{'hook':'blocks.2.hook_resid_post','operation':'STEERING_OPERATION_ADD','value':-8," +
            "'normalize':true,'tag':'0.5','seed':18446744073709551615,'vector':{'direction':[0.5,-1e-3,2]}}]}";
        Assert.Equal(expected.Replace('\'', '"'), json);
    }

    [Theory]
    [InlineData("")]
    [InlineData("# nothing yet\n")]
    [InlineData("experiments: []")]
    [InlineData("experiments:")]
    public void Empty_configs_have_no_experiments(string text) =>
        Assert.Empty(ExperimentConfig.Parse(text, "x.yaml").Experiments);

    [Fact]
    public void Load_names_the_file_in_errors()
    {
        var dir = Directory.CreateTempSubdirectory("ff-exp-");
        try
        {
            var path = Path.Combine(dir.FullName, "experiments.yaml");
            File.WriteAllText(path, "experiments: 3");
            var e = Assert.Throws<InvalidDataException>(() => ExperimentConfig.Load(path));
            Assert.Equal($"{path}: experiments: must be a list, got '3'", e.Message);
            File.WriteAllText(path, Example);
            Assert.Single(ExperimentConfig.Load(path).Experiments);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    private static string One(string experimentFields = "salt: s", string arm0 = "{name: a, weight: 1}",
        string arm1 = "{name: b, weight: 1}") => $"""
        experiments:
          - name: e
            {experimentFields}
            arms:
              - {arm0}
              - {arm1}
        """;

    public static TheoryData<string, string> BadConfigs => new()
    {
        { One(arm1: "{name: b, weight: -1}"), "experiments[0].arms[1].weight: must be a finite number > 0, got -1" },
        { One(arm1: "{name: b, weight: 0}"), "experiments[0].arms[1].weight: must be a finite number > 0, got 0" },
        { One(arm0: "{name: a, weight: .inf}"),
            "experiments[0].arms[0].weight: must be a finite number > 0, got .inf" },
        { One(arm0: "{name: a, weight: x}"), "experiments[0].arms[0].weight: must be a finite number > 0, got 'x'" },
        { One(arm0: "{name: a}"), "experiments[0].arms[0].weight: is required" },
        { One(arm0: "{name: a, wieght: 1}"),
            "experiments[0].arms[0].wieght: unknown key (allowed here: name, weight, steering)" },
        { One("salt: s\n    trafic: 0.5"), "experiments[0].trafic: unknown key" },
        { "experiment: []", "experiment: unknown key (allowed here: experiments)" },
        { One(arm1: "{name: A, weight: 1}"), "experiments[0].arms[1].name: must match [a-z0-9][a-z0-9._-]{0,63}" },
        { One(arm1: $"{{name: {new string('x', 65)}, weight: 1}}"), "experiments[0].arms[1].name: must match" },
        { One(arm1: "{name: a, weight: 1}"), "experiments[0].arms[1].name: duplicate arm name 'a'" },
        { One("salt: s\n    control: c"), "experiments[0].control: names no arm: 'c' (arms: a, b)" },
        { One("salt: s\n    traffic: 0"), "experiments[0].traffic: must be a number in (0, 1], got 0" },
        { One("salt: s\n    traffic: 1.5"), "experiments[0].traffic: must be a number in (0, 1], got 1.5" },
        { One("traffic: 1"), "experiments[0].salt: is required" },
        { One(arm1: "{name: b, weight: 1, steering: [1]}"), "experiments[0].arms[1].steering: must be a mapping" },
        { "experiments: [{name: e, salt: s, arms: [{name: a, weight: 1}]}]",
            "experiments[0].arms: needs at least 2 arms, got 1" },
        { One() + "\n" + One().Replace("experiments:\n", ""), "experiments[1].name: duplicate experiment name 'e'" },
        { "experiments: [{name: e, salt: s, arms: {a: 1}}]", "experiments[0].arms: must be a list, got a mapping" },
        { "experiments:\n  - name: e\n    name: f\n", "line 3, column 5: " },
        { "experiments: [{name: e", "line " },
    };

    [Theory]
    [MemberData(nameof(BadConfigs))]
    public void Bad_configs_name_the_source_and_the_field(string text, string expected)
    {
        var e = Assert.Throws<InvalidDataException>(() => ExperimentConfig.Parse(text, "experiments.yaml"));
        Assert.StartsWith($"experiments.yaml: {expected}", e.Message);
    }
}
