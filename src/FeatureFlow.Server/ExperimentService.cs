using FeatureFlow.Api.V1;
using FeatureFlow.Engine;
using FeatureFlow.Experiments;
using FeatureFlow.Steering;
using FeatureFlow.Steering.Packs;
using Google.Protobuf;

namespace FeatureFlow.Server;

/// <summary>
/// The server's side of experiments: the registry (config file, hot reload, sticky assignment, SQLite figures)
/// plus what only the server can do: check every arm's steering against the loaded model and packs before a
/// config is accepted, turn an arm into a SteeringSpec, and report figures on the wire.
/// </summary>
public sealed class ExperimentService : IDisposable
{
    private readonly ExperimentRegistry _registry;

    public ExperimentService(ServerOptions options, GenerationEngine engine, SteeringCatalog catalog, ILogger<ExperimentService> logger)
    {
        var store = ExperimentStore.Open(options.ExperimentsDatabase ?? (options.ExperimentsConfig is null ? ":memory:" : "experiments.db"));
        try
        {
            _registry = new ExperimentRegistry(options.ExperimentsConfig, store, config => Validate(config, engine, catalog),
                line => logger.LogInformation("{Line}", line), line => logger.LogWarning("{Line}", line));
        }
        catch
        {
            store.Dispose();
            throw;
        }
    }

    public ExperimentConfig Current => _registry.Current;
    public long Version => _registry.Version;

    /// <summary>A new config is accepted only if every arm's steering parses and compiles against this model.</summary>
    private static void Validate(ExperimentConfig config, GenerationEngine engine, SteeringCatalog catalog)
    {
        foreach (var e in config.Experiments.Values)
            foreach (var arm in e.Arms)
            {
                var field = $"experiments '{e.Name}' arm '{arm.Name}' steering";
                try
                {
                    engine.Compiler.Compile(RequestMapper.ToDomain(Parse(arm), catalog, engine.Compiler, "steering"));
                }
                catch (Exception ex) when (ex is FieldValidationException or InvalidProtocolBufferException)
                {
                    throw new InvalidDataException($"{field}: {ex.Message}", ex);
                }
            }
    }

    private static Api.V1.SteeringSpec Parse(ExperimentArm arm) => Api.V1.SteeringSpec.Parser.ParseJson(arm.SteeringJson);

    /// <summary>The arm for a subject and its steering; a null arm means the subject is not enrolled (unsteered).</summary>
    public (string? Arm, Api.V1.SteeringSpec Steering) Assign(string experiment, string subjectId)
    {
        if (string.IsNullOrEmpty(subjectId)) throw new FieldValidationException("subject_id", "an experiment needs the subject's id to pick a sticky arm");
        Experiment e;
        string? arm;
        try { (e, arm) = _registry.Assign(experiment, subjectId); }
        catch (KeyNotFoundException ex) { throw new ExperimentNotFoundException("experiment", ex.Message); }
        return (arm, arm is null ? new Api.V1.SteeringSpec() : Parse(e.Arms.Single(a => a.Name == arm)));
    }

    public void RecordRequest(string experiment, string arm, string requestId, string subjectId, int tokens, TimeSpan latency) =>
        _registry.Store.RecordRequest(experiment, arm, requestId, subjectId, tokens, latency.TotalMilliseconds);

    public string RecordOutcome(RecordOutcomeRequest r)
    {
        if (string.IsNullOrEmpty(r.Name)) throw new FieldValidationException("name", "name the outcome, e.g. \"rating\"");
        if (!double.IsFinite(r.Value)) throw new FieldValidationException("value", $"is {r.Value}; it must be finite");
        if (r.WhoCase == RecordOutcomeRequest.WhoOneofCase.None) throw new FieldValidationException("subject_id", "give subject_id or request_id");
        try
        {
            return _registry.RecordOutcome(r.Experiment, r.SubjectId, r.RequestId, r.Name, r.Value);
        }
        catch (KeyNotFoundException ex)
        {
            throw new ExperimentNotFoundException(r.WhoCase == RecordOutcomeRequest.WhoOneofCase.RequestId ? "request_id" : "experiment", ex.Message);
        }
        catch (ArgumentException ex)
        {
            throw new FieldValidationException("subject_id", ex.Message);
        }
    }

    public ExperimentInfo Info(string name)
    {
        if (!Current.Experiments.TryGetValue(name, out var e))
            throw new ExperimentNotFoundException("name", $"no experiment named '{name}' (configured: {string.Join(", ", Current.Experiments.Keys.Order(StringComparer.Ordinal))})");
        var figures = _registry.Store.Figures(e);
        var info = new ExperimentInfo { Name = e.Name, Salt = e.Salt, Traffic = e.Traffic, Control = e.Control };
        foreach (var (arm, f) in e.Arms.Zip(figures.Arms))
        {
            var armInfo = new Api.V1.ArmFigures
            {
                Name = arm.Name, Weight = arm.Weight, SteeringJson = arm.SteeringJson,
                Requests = f.Requests, Tokens = f.Tokens, MeanLatencyMs = f.Requests == 0 ? 0 : f.LatencyMs.Mean,
            };
            foreach (var (outcome, o) in f.Outcomes.OrderBy(o => o.Key, StringComparer.Ordinal))
            {
                var of = new Api.V1.OutcomeFigures { Name = outcome, N = o.Mean.N, Mean = o.Mean.Mean, CiLow = o.Mean.Low, CiHigh = o.Mean.High };
                if (o.VsControl is { } d)
                    (of.HasDifference, of.Difference, of.DifferenceCiLow, of.DifferenceCiHigh, of.PValue) = (true, d.Diff, d.Low, d.High, d.PValue);
                armInfo.Outcomes.Add(of);
            }
            info.Arms.Add(armInfo);
        }
        return info;
    }

    public void Dispose()
    {
        _registry.Dispose();
        _registry.Store.Dispose();
    }
}

/// <summary>An experiment, or a request recorded for one, that does not exist: NOT_FOUND on the wire.</summary>
public sealed class ExperimentNotFoundException(string field, string message) : FieldValidationException(field, message);
