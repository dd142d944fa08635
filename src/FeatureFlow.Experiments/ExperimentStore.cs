using Microsoft.Data.Sqlite;

namespace FeatureFlow.Experiments;

/// <summary>An arm's figures: served requests and tokens, latency, and each outcome's mean (vs control).</summary>
public sealed record ArmFigures(string Arm, bool IsControl, long Requests, long Tokens, MeanInterval LatencyMs,
    IReadOnlyDictionary<string, OutcomeFigures> Outcomes);

/// <summary>One outcome in one arm; <paramref name="VsControl"/> is null for the control arm itself.</summary>
public sealed record OutcomeFigures(Moments Moments, MeanInterval Mean, Difference? VsControl);

/// <summary>Every configured arm, in config order, each with every outcome name recorded in any arm.</summary>
public sealed record ExperimentFigures(string Experiment, string Control, IReadOnlyList<ArmFigures> Arms);

/// <summary>
/// Per-experiment bookkeeping in SQLite: a request log (to find a request's arm later) and running sufficient
/// statistics (<see cref="Moments"/>) per arm and per arm × outcome, so figures cost O(arms × outcomes) however
/// much traffic there was. One connection behind a lock: SQLite serialises writers anyway, and a shared
/// connection is the only way ":memory:" is one database.
/// </summary>
public sealed class ExperimentStore : IDisposable
{
    private const int SchemaVersion = 1;

    private const string Schema = """
        CREATE TABLE IF NOT EXISTS requests (
            experiment TEXT NOT NULL, request_id TEXT NOT NULL, arm TEXT NOT NULL, subject_id TEXT,
            tokens INTEGER NOT NULL, latency_ms REAL NOT NULL, recorded_at TEXT NOT NULL,
            PRIMARY KEY (experiment, request_id)) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS arms (
            experiment TEXT NOT NULL, arm TEXT NOT NULL, requests INTEGER NOT NULL, tokens INTEGER NOT NULL,
            latency_mean REAL NOT NULL, latency_m2 REAL NOT NULL,
            PRIMARY KEY (experiment, arm)) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS outcomes (
            experiment TEXT NOT NULL, arm TEXT NOT NULL, name TEXT NOT NULL,
            n INTEGER NOT NULL, mean REAL NOT NULL, m2 REAL NOT NULL,
            PRIMARY KEY (experiment, arm, name)) WITHOUT ROWID;
        """;

    // Welford's update in SQL: on the right of SET every column still holds its old value.
    private const string InsertRequest = """
        INSERT INTO requests VALUES ($e, $r, $a, $s, $t, $x, $at) ON CONFLICT DO NOTHING;
        """;
    private const string AddToArm = """
        INSERT INTO arms VALUES ($e, $a, 1, $t, $x, 0) ON CONFLICT DO UPDATE SET
            requests = requests + 1, tokens = tokens + $t,
            latency_mean = latency_mean + ($x - latency_mean) / (requests + 1),
            latency_m2 = latency_m2 + ($x - latency_mean) * ($x - latency_mean - ($x - latency_mean) / (requests + 1));
        """;
    private const string AddOutcome = """
        INSERT INTO outcomes VALUES ($e, $a, $n, 1, $x, 0) ON CONFLICT DO UPDATE SET
            n = n + 1,
            mean = mean + ($x - mean) / (n + 1),
            m2 = m2 + ($x - mean) * ($x - mean - ($x - mean) / (n + 1));
        """;

    private readonly Lock _gate = new();
    private readonly SqliteConnection _connection;
    private bool _disposed;

    private ExperimentStore(SqliteConnection connection) => _connection = connection;

    /// <summary>Opens or creates the database at <paramref name="path"/>; ":memory:" gives a private one.</summary>
    public static ExperimentStore Open(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        var builder = new SqliteConnectionStringBuilder
        {
            DataSource = path,
            Mode = SqliteOpenMode.ReadWriteCreate,
            // The store holds its one connection for its lifetime; pooling would only keep the file open after
            // Dispose, which blocks deleting or reopening it cleanly.
            Pooling = false,
        };
        var connection = new SqliteConnection(builder.ToString());
        try
        {
            connection.Open();
            // WAL lets readers (another process inspecting figures) run beside the writer. synchronous=NORMAL
            // skips the fsync per commit: a power cut can lose the last few records but never corrupts the file.
            Execute(connection, "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;");
            var version = Convert.ToInt32(Scalar(connection, "PRAGMA user_version;"));
            if (version > SchemaVersion)
                throw new InvalidDataException(
                    $"{path}: experiment store schema version {version} is newer than this build's ({SchemaVersion})");
            Execute(connection, Schema + $"PRAGMA user_version = {SchemaVersion};");
            return new ExperimentStore(connection);
        }
        catch
        {
            connection.Dispose();
            throw;
        }
    }

    /// <summary>The journal mode SQLite reports ("wal" for a file, "memory" for ":memory:").</summary>
    public string JournalMode
    {
        get
        {
            lock (_gate)
            {
                ObjectDisposedException.ThrowIf(_disposed, this);
                return (string)Scalar(_connection, "PRAGMA journal_mode;")!;
            }
        }
    }

    /// <summary>
    /// Logs a served request. Recording the same request id again with the same arm is ignored (a retried
    /// write must not count twice); with a different arm it throws, since one request cannot be in two arms.
    /// </summary>
    public void RecordRequest(string experiment, string arm, string requestId, string? subjectId, int tokens,
        double latencyMs)
    {
        ArgumentException.ThrowIfNullOrEmpty(experiment);
        ArgumentException.ThrowIfNullOrEmpty(arm);
        ArgumentException.ThrowIfNullOrEmpty(requestId);
        ArgumentOutOfRangeException.ThrowIfNegative(tokens);
        if (!(double.IsFinite(latencyMs) && latencyMs >= 0))
            throw new ArgumentOutOfRangeException(nameof(latencyMs), latencyMs, "must be a finite number >= 0");
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            using var tx = _connection.BeginTransaction();
            var inserted = Execute(_connection, InsertRequest, tx, ("$e", experiment), ("$r", requestId), ("$a", arm),
                ("$s", subjectId), ("$t", tokens), ("$x", latencyMs), ("$at", DateTime.UtcNow.ToString("O")));
            if (inserted == 0)
            {
                var existing = ArmOfRequestLocked(experiment, requestId, tx);
                if (existing != arm)
                    throw new ArgumentException(
                        $"request '{requestId}' of experiment '{experiment}' is already recorded in arm " +
                        $"'{existing}', not '{arm}'", nameof(arm));
                return;
            }
            Execute(_connection, AddToArm, tx, ("$e", experiment), ("$a", arm), ("$t", tokens), ("$x", latencyMs));
            tx.Commit();
        }
    }

    /// <summary>Adds one observation of the outcome <paramref name="name"/> (any finite number) to an arm.</summary>
    public void RecordOutcome(string experiment, string arm, string name, double value)
    {
        ArgumentException.ThrowIfNullOrEmpty(experiment);
        ArgumentException.ThrowIfNullOrEmpty(arm);
        ArgumentException.ThrowIfNullOrEmpty(name);
        if (!double.IsFinite(value)) throw new ArgumentOutOfRangeException(nameof(value), value, "must be finite");
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            Execute(_connection, AddOutcome, null, ("$e", experiment), ("$a", arm), ("$n", name), ("$x", value));
        }
    }

    /// <summary>The arm a recorded request was served from, or null if the request was never recorded.</summary>
    public string? ArmOfRequest(string experiment, string requestId)
    {
        ArgumentException.ThrowIfNullOrEmpty(experiment);
        ArgumentException.ThrowIfNullOrEmpty(requestId);
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return ArmOfRequestLocked(experiment, requestId, null);
        }
    }

    /// <summary>Figures of the experiment's configured arms; data of arms no longer configured is left out.</summary>
    public ExperimentFigures Figures(Experiment e)
    {
        ArgumentNullException.ThrowIfNull(e);
        var totals = new Dictionary<string, (long Requests, long Tokens, Moments Latency)>(StringComparer.Ordinal);
        var outcomes = new Dictionary<(string Arm, string Name), Moments>();
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            using (var command = Command(_connection,
                       "SELECT arm, requests, tokens, latency_mean, latency_m2 FROM arms WHERE experiment = $e;",
                       null, ("$e", e.Name)))
            using (var read = command.ExecuteReader())
                while (read.Read())
                {
                    var requests = read.GetInt64(1);
                    totals[read.GetString(0)] =
                        (requests, read.GetInt64(2), new Moments(requests, read.GetDouble(3), read.GetDouble(4)));
                }
            using (var command = Command(_connection,
                       "SELECT arm, name, n, mean, m2 FROM outcomes WHERE experiment = $e;", null, ("$e", e.Name)))
            using (var read = command.ExecuteReader())
                while (read.Read())
                    outcomes[(read.GetString(0), read.GetString(1))] =
                        new Moments(read.GetInt64(2), read.GetDouble(3), read.GetDouble(4));
        }

        var names = outcomes.Keys.Where(k => e.Arms.Any(a => a.Name == k.Arm)).Select(k => k.Name)
            .Distinct().Order(StringComparer.Ordinal).ToList();
        var arms = e.Arms.Select(arm =>
        {
            var isControl = arm.Name == e.Control;
            var perOutcome = new Dictionary<string, OutcomeFigures>(StringComparer.Ordinal);
            foreach (var name in names)
            {
                var m = outcomes.GetValueOrDefault((arm.Name, name));
                var vs = isControl ? (Difference?)null
                    : Statistics.Welch(m, outcomes.GetValueOrDefault((e.Control, name)));
                perOutcome[name] = new OutcomeFigures(m, Statistics.Mean(m), vs);
            }
            var t = totals.GetValueOrDefault(arm.Name);
            return new ArmFigures(arm.Name, isControl, t.Requests, t.Tokens, Statistics.Mean(t.Latency),
                perOutcome.AsReadOnly());
        }).ToList();
        return new ExperimentFigures(e.Name, e.Control, arms.AsReadOnly());
    }

    public void Dispose()
    {
        lock (_gate)
        {
            if (_disposed) return;
            _disposed = true;
            _connection.Dispose();
        }
    }

    private string? ArmOfRequestLocked(string experiment, string requestId, SqliteTransaction? tx)
    {
        using var command = Command(_connection,
            "SELECT arm FROM requests WHERE experiment = $e AND request_id = $r;", tx,
            ("$e", experiment), ("$r", requestId));
        return (string?)command.ExecuteScalar();
    }

    private static SqliteCommand Command(SqliteConnection connection, string sql, SqliteTransaction? tx,
        params (string Name, object? Value)[] parameters)
    {
        var command = connection.CreateCommand();
        command.CommandText = sql;
        command.Transaction = tx;
        foreach (var (name, value) in parameters) command.Parameters.AddWithValue(name, value ?? DBNull.Value);
        return command;
    }

    private static int Execute(SqliteConnection connection, string sql, SqliteTransaction? tx = null,
        params (string Name, object? Value)[] parameters)
    {
        using var command = Command(connection, sql, tx, parameters);
        return command.ExecuteNonQuery();
    }

    private static object? Scalar(SqliteConnection connection, string sql)
    {
        using var command = Command(connection, sql, null);
        return command.ExecuteScalar();
    }
}
