using System.CommandLine;

namespace FeatureFlow.Cli;

/// <summary><c>featureflow eval</c>: measured evaluations of steering and of the flow map's matches.</summary>
public static class EvalCommand
{
    public static Command Build(TextWriter output, TextWriter error) =>
        new("eval", "Evaluate steering (strength sweeps with judge-free scores and charts) and flow-map matches; reproduce "
            + "docs/steering-results.md.")
        {
            EvalSweepCommand.Build(output, error),
            EvalMatchesCommand.Build(output, error),
            EvalResultsCommand.Build(output, error),
        };
}
