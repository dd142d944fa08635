using System.Security.Cryptography;
using System.Text;

namespace FeatureFlow.Experiments;

/// <summary>
/// The live experiment config: loaded from a file at start, reloaded when the file changes, and swapped
/// atomically so requests see either the old or the new config whole. A changed file that does not parse or
/// that <c>validate</c> rejects is logged and ignored; the last good config keeps serving. Does not own the store.
/// </summary>
public sealed class ExperimentRegistry : IDisposable
{
    // Editors and deploy tools write a file in several steps; waiting for quiet avoids parsing a half-written one.
    private static readonly TimeSpan Debounce = TimeSpan.FromMilliseconds(200);
    // File watchers miss events on some container and network file systems and on ConfigMap symlink swaps, so
    // the file is also polled. Each poll hashes the whole (small) file: timestamps are too coarse to trust (two
    // same-size writes within one tick look identical) and a swapped symlink in the path changes none of them.
    private static readonly TimeSpan PollInterval = TimeSpan.FromSeconds(1);

    private readonly string? _path;
    private readonly Action<ExperimentConfig>? _validate;
    private readonly Action<string>? _log;
    private readonly Action<string>? _warn;
    private readonly Lock _gate = new();
    private readonly FileSystemWatcher? _watcher;
    private readonly Timer? _debounce;
    private readonly Timer? _poll;
    private ExperimentConfig _current;
    private long _version;
    // The content hash (or read error) last acted on, accepted or rejected, so a bad file is reported once
    // rather than on every poll.
    private string? _seenKey;
    private bool _disposed;

    /// <summary>
    /// Loads <paramref name="configPath"/> (throwing if it is unreadable, invalid or rejected by
    /// <paramref name="validate"/>) and watches it; with no path the config stays <see cref="ExperimentConfig.Empty"/>.
    /// </summary>
    public ExperimentRegistry(string? configPath, ExperimentStore store, Action<ExperimentConfig>? validate = null,
        Action<string>? log = null, Action<string>? warn = null)
    {
        ArgumentNullException.ThrowIfNull(store);
        Store = store;
        _validate = validate;
        _log = log;
        _warn = warn ?? log;
        _current = ExperimentConfig.Empty;
        if (configPath is null) return;

        _path = Path.GetFullPath(configPath);
        lock (_gate) ReadAndApply();
        _debounce = new Timer(_ => Check());
        _poll = new Timer(_ => Poll(), null, PollInterval, Timeout.InfiniteTimeSpan);
        try
        {
            _watcher = new FileSystemWatcher(Path.GetDirectoryName(_path)!, Path.GetFileName(_path))
            {
                NotifyFilter = NotifyFilters.LastWrite | NotifyFilters.FileName | NotifyFilters.Size
                    | NotifyFilters.CreationTime,
            };
            _watcher.Changed += OnFileEvent;
            _watcher.Created += OnFileEvent;
            _watcher.Deleted += OnFileEvent;
            _watcher.Renamed += OnFileEvent;
            _watcher.Error += (_, e) =>
                _warn?.Invoke($"{_path}: file watcher failed ({e.GetException().Message}); polling");
            _watcher.EnableRaisingEvents = true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or PlatformNotSupportedException)
        {
            // Typically the inotify watch limit; polling alone still picks changes up.
            _watcher?.Dispose();
            _watcher = null;
            _warn?.Invoke($"{_path}: cannot watch ({e.Message}); polling every {PollInterval.TotalSeconds:0.#} s");
        }
    }

    public ExperimentStore Store { get; }

    /// <summary>The config in force; a reload replaces the whole object, never mutates it.</summary>
    public ExperimentConfig Current => Volatile.Read(ref _current);

    /// <summary>1 after the initial load (0 without a file), plus one per accepted reload.</summary>
    public long Version => Interlocked.Read(ref _version);

    /// <summary>Raised after each accepted reload, on the reloading thread; handler exceptions are logged.</summary>
    public event Action<ExperimentConfig>? Reloaded;

    /// <summary>
    /// Re-reads and applies the file now, even if unchanged (so <c>validate</c> runs again); throws the reason
    /// (<see cref="InvalidDataException"/>, or the I/O error) when the new config is rejected.
    /// </summary>
    public void Reload()
    {
        if (_path is null) throw new InvalidOperationException("the registry was created without a config file");
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            ReadAndApply();
        }
    }

    /// <summary>The experiment and the subject's arm in it (null arm: not enrolled, serve unsteered).</summary>
    public (Experiment Experiment, string? Arm) Assign(string experiment, string subjectId)
    {
        var e = Find(experiment);
        return (e, Assignment.Arm(e, subjectId));
    }

    /// <summary>
    /// Records an outcome against the arm that served <paramref name="requestId"/> if that request is recorded,
    /// else against <paramref name="subjectId"/>'s current assignment. Returns the arm it was recorded for.
    /// </summary>
    public string RecordOutcome(string experiment, string? subjectId, string? requestId, string name, double value)
    {
        ArgumentException.ThrowIfNullOrEmpty(experiment);
        // The stored request comes first: it is the arm actually served, which a reload may since have changed.
        var arm = string.IsNullOrEmpty(requestId) ? null : Store.ArmOfRequest(experiment, requestId);
        if (arm is null && !string.IsNullOrEmpty(subjectId))
        {
            var (e, assigned) = Assign(experiment, subjectId);
            arm = assigned ?? throw new ArgumentException(
                $"subject '{subjectId}' is not enrolled in experiment '{experiment}' (traffic {e.Traffic:0.###})"
                + (string.IsNullOrEmpty(requestId) ? "" : $" and request '{requestId}' is not recorded"),
                nameof(subjectId));
        }
        if (arm is null)
        {
            if (string.IsNullOrEmpty(requestId))
                throw new ArgumentException(
                    $"outcome '{name}' of experiment '{experiment}' needs a subject id or a recorded request id " +
                    "to find its arm", nameof(subjectId));
            throw new KeyNotFoundException(
                $"no request '{requestId}' recorded for experiment '{experiment}', and no subject id to assign an arm");
        }
        Store.RecordOutcome(experiment, arm, name, value);
        return arm;
    }

    public void Dispose()
    {
        lock (_gate)
        {
            if (_disposed) return;
            _disposed = true;
            _watcher?.Dispose();
            _debounce?.Dispose();
            _poll?.Dispose();
        }
    }

    private Experiment Find(string experiment)
    {
        ArgumentException.ThrowIfNullOrEmpty(experiment);
        var experiments = Current.Experiments;
        if (experiments.TryGetValue(experiment, out var e)) return e;
        var names = experiments.Keys.Order(StringComparer.Ordinal).ToList();
        var configured = names.Count == 0 ? "none" : string.Join(", ", names);
        throw new KeyNotFoundException($"no experiment named '{experiment}' (configured: {configured})");
    }

    private void OnFileEvent(object sender, FileSystemEventArgs e)
    {
        lock (_gate)
        {
            // Each event pushes the check back, so a burst of writes is read once, after it ends.
            if (!_disposed) _debounce!.Change(Debounce, Timeout.InfiniteTimeSpan);
        }
    }

    private void Poll()
    {
        lock (_gate)
        {
            if (_disposed) return;
            Check();
            // Re-armed here rather than periodic so a slow validate never stacks up polls.
            _poll!.Change(PollInterval, Timeout.InfiniteTimeSpan);
        }
    }

    /// <summary>Applies the file if its content changed since it was last read.</summary>
    private void Check()
    {
        lock (_gate)
        {
            if (_disposed) return;
            byte[] bytes;
            try
            {
                bytes = File.ReadAllBytes(_path!);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                Report($"error:{e.Message}", $"{_path}: cannot read ({e.Message}); still serving version {Version}");
                return;
            }
            var key = Convert.ToHexString(SHA256.HashData(bytes));
            if (key == _seenKey) return;
            _seenKey = key;
            try
            {
                Apply(bytes);
            }
            // Timer threads must not throw, and whatever validate throws is a reason to keep the old config.
            catch (Exception e)
            {
                _warn?.Invoke($"{e.Message}; still serving version {Version}");
            }
        }
    }

    private void Report(string key, string message)
    {
        if (key == _seenKey) return;
        _seenKey = key;
        _warn?.Invoke(message);
    }

    private void ReadAndApply()
    {
        var bytes = File.ReadAllBytes(_path!);
        _seenKey = Convert.ToHexString(SHA256.HashData(bytes));
        Apply(bytes);
    }

    private void Apply(byte[] bytes)
    {
        // A writer that truncates before writing leaves an empty file for a moment; taking that as "no
        // experiments" would briefly drop them all. Removing every experiment takes `experiments: []`.
        if (bytes.AsSpan().Trim(" \t\r\n"u8).IsEmpty)
            throw new InvalidDataException($"{_path}: file is empty (write `experiments: []` for none)");
        string text;
        using (var reader = new StreamReader(new MemoryStream(bytes), Encoding.UTF8,
                   detectEncodingFromByteOrderMarks: true))
            text = reader.ReadToEnd();
        var config = ExperimentConfig.Parse(text, _path!);
        try
        {
            _validate?.Invoke(config);
        }
        catch (Exception e)
        {
            throw new InvalidDataException($"{_path}: rejected by validation: {e.Message}", e);
        }
        Volatile.Write(ref _current, config);
        var version = Interlocked.Increment(ref _version);
        var names = string.Join(", ", config.Experiments.Keys.Order(StringComparer.Ordinal));
        _log?.Invoke($"{_path}: loaded version {version} ({config.Experiments.Count} experiments: {names})");
        foreach (var handler in Reloaded?.GetInvocationList() ?? [])
        {
            try
            {
                ((Action<ExperimentConfig>)handler)(config);
            }
            catch (Exception e)
            {
                _warn?.Invoke($"{_path}: a Reloaded handler failed: {e.Message}");
            }
        }
    }
}
