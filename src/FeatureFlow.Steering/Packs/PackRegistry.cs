using System.Collections.Concurrent;
using System.Collections.Frozen;
using System.Collections.Immutable;
using System.Security.Cryptography;
using FeatureFlow.Models.Folder;

namespace FeatureFlow.Steering.Packs;

/// <summary>A pack file the registry refused, and why.</summary>
public sealed record PackLoadError(string Path, string Message);

/// <summary>
/// A well-formed pack reference that names no pack (or no held version of one): a client asked for something
/// that is not there, which servers report as NOT FOUND rather than as a malformed request.
/// </summary>
public sealed class PackNotFoundException(string field, string message) : FieldValidationException(field, message);

/// <summary>How a <see cref="PackRegistry"/> keeps up with its directory.</summary>
public sealed record PackRegistryOptions
{
    /// <summary>Reload when the directory changes. Servers watch; one-shot tools should not.</summary>
    public bool Watch { get; init; }

    /// <summary>Versions held per pack name for <c>name@hash</c> pins; beyond it the oldest are forgotten.</summary>
    public int MaxVersionsPerName { get; init; } = 16;

    /// <summary>Rescan period: file-system events do not arrive in every container or network file system.</summary>
    public TimeSpan PollInterval { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>Quiet time after a file-system event before reloading, so a file being written is read whole.</summary>
    public TimeSpan Debounce { get; init; } = TimeSpan.FromMilliseconds(200);

    /// <summary>
    /// Gets a line for each change after the initial load (pack loaded, replaced, removed, refused). The initial
    /// load's refusals are only in <see cref="PackRegistry.Errors"/>, which start-up code reports itself.
    /// </summary>
    public Action<string>? Log { get; init; }

    /// <summary>Gets the lines about problems (refusals, a directory that cannot be watched or scanned); null: <see cref="Log"/>.</summary>
    public Action<string>? Warn { get; init; }
}

/// <summary>
/// The packs of a model folder's <c>packs/</c> directory, one file NAME.pack.safetensors per pack. A bad file is
/// refused with its reason and the others load; a bad replacement of a good file leaves the good version serving.
/// Each version is known by its content sha256 and stays pinnable as <c>name@hashprefix</c> while held. Readers get
/// an immutable snapshot that reloads and admin writes replace whole, so no lookup sees half a change.
/// </summary>
public sealed class PackRegistry : IDisposable
{
    private const int MinPinLength = 6, MaxNameLength = 128;

    private readonly string _directory;
    private readonly ModelManifest _manifest;
    private readonly PackRegistryOptions _options;
    // Serializes rescans and admin writes; readers never take it.
    private readonly Lock _gate = new();
    private Dictionary<string, FileState> _files = new(StringComparer.Ordinal);
    // Paths the watcher reported are re-read even if size and timestamp match: file timestamps can be coarse.
    private readonly ConcurrentDictionary<string, bool> _touched = new(StringComparer.Ordinal);
    private readonly FileSystemWatcher? _watcher;
    private readonly Timer? _timer;
    private volatile Snapshot _snapshot = Snapshot.Empty;
    private volatile bool _disposed;

    private PackRegistry(string directory, ModelManifest manifest, PackRegistryOptions options)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(options.MaxVersionsPerName, 1);
        _directory = Path.GetFullPath(directory);
        _manifest = manifest;
        _options = options;
        lock (_gate) Rescan(initial: true);
        if (!options.Watch) return;
        _timer = new Timer(_ => Tick(), null, options.PollInterval, options.PollInterval);
        if (!Directory.Exists(_directory)) return; // polling notices it once it is created
        try
        {
            _watcher = new FileSystemWatcher(_directory, "*" + SteeringPack.Extension)
            {
                NotifyFilter = NotifyFilters.FileName | NotifyFilters.LastWrite | NotifyFilters.Size,
            };
            _watcher.Created += OnFileEvent;
            _watcher.Changed += OnFileEvent;
            _watcher.Deleted += OnFileEvent;
            _watcher.Renamed += OnFileEvent;
            _watcher.EnableRaisingEvents = true;
        }
        catch (IOException e)
        {
            // Typically the inotify watch limit; polling still sees every change, a little later.
            _watcher?.Dispose();
            _watcher = null;
            (options.Warn ?? options.Log)?.Invoke($"steering packs: not watching {_directory} ({e.Message}); polling instead");
        }
    }

    /// <summary>Raised after each change to <see cref="Packs"/>, <see cref="Errors"/> or the held versions.</summary>
    public event Action? Changed;

    /// <summary>The current version of each pack, ordered by name.</summary>
    public IReadOnlyCollection<SteeringPack> Packs => _snapshot.Listing;

    /// <summary>The files refused at the last scan, and why (a refused replacement's pack keeps serving).</summary>
    public IReadOnlyList<PackLoadError> Errors => _snapshot.Errors;

    /// <summary>0 after loading, then one more at each change.</summary>
    public long Version => _snapshot.Version;

    /// <summary>Loads <paramref name="directory"/> (absent means no packs); watching only if the options ask.</summary>
    public static PackRegistry Load(string directory, ModelManifest manifest, PackRegistryOptions? options = null) =>
        new(directory, manifest, options ?? new PackRegistryOptions());

    /// <summary>
    /// Resolves <c>name</c> (the current version) or <c>name@hashprefix</c> (a held version, by at least
    /// 6 hex digits of its content sha256). A malformed reference throws <see cref="FieldValidationException"/>
    /// before any file-system access; a missing pack or version throws <see cref="PackNotFoundException"/>.
    /// </summary>
    public SteeringPack Get(string reference, string field)
    {
        var (name, pin) = ParseReference(reference, field);
        var snapshot = _snapshot;
        if (pin is null)
            return snapshot.Current.TryGetValue(name, out var pack) ? pack
                : throw new PackNotFoundException(field,
                    $"no steering pack named '{name}' (loaded: {Loaded(snapshot)})");
        var held = snapshot.History.GetValueOrDefault(name, []);
        var matches = held.Where(p => p.Metadata.ContentSha256.StartsWith(pin, StringComparison.Ordinal)).ToArray();
        return matches.Length switch
        {
            1 => matches[0],
            0 => throw new PackNotFoundException(field, held.IsEmpty
                ? $"no steering pack named '{name}' (loaded: {Loaded(snapshot)})"
                : $"pack '{name}' has no held version {pin} (held: {string.Join(", ", held.Select(Describe))})"),
            _ => throw new FieldValidationException(field,
                $"'{pin}' matches {matches.Length} versions of pack '{name}'; give more hex digits"),
        };
    }

    /// <summary>Every held version of <paramref name="name"/>, newest first; empty if none was ever loaded.</summary>
    public IReadOnlyList<SteeringPack> Versions(string name)
    {
        CheckName(name, nameof(name));
        return _snapshot.History.GetValueOrDefault(name, []);
    }

    /// <summary>
    /// Validates <paramref name="safetensorsBytes"/> as a file NAME.pack.safetensors would be, stores it atomically
    /// and makes it current at once. Throws <see cref="FieldValidationException"/> for a bad name and
    /// <see cref="InvalidDataException"/> (with the reason) for bytes that are not this model's pack
    /// <paramref name="name"/>.
    /// </summary>
    public SteeringPack Put(string name, byte[] safetensorsBytes)
    {
        ArgumentNullException.ThrowIfNull(safetensorsBytes);
        CheckName(name, nameof(name));
        var pack = Validate(name, safetensorsBytes, $"upload of pack '{name}'");
        var sha = Convert.ToHexStringLower(SHA256.HashData(safetensorsBytes));
        var path = PathOf(name);
        bool changed;
        lock (_gate)
        {
            Directory.CreateDirectory(_directory);
            // Readers of the directory (this registry's scans, other processes) must never see a partial file.
            var temp = Path.Combine(_directory, $".{name}.{Guid.NewGuid():N}.tmp");
            try
            {
                File.WriteAllBytes(temp, safetensorsBytes);
                File.Move(temp, path, overwrite: true);
            }
            finally
            {
                File.Delete(temp);
            }
            if (_files.GetValueOrDefault(path) is { Pack: { } same } known && known.Sha256 == sha) pack = same;
            _files[path] = new FileState(StampOf(new FileInfo(path)), pack, sha, null);
            changed = Publish(initial: false);
        }
        if (changed) Changed?.Invoke();
        return pack;
    }

    /// <summary>
    /// Deletes pack <paramref name="name"/>'s file and removes it from the current set at once; its held versions stay
    /// pinnable. Returns false if there was nothing to delete.
    /// </summary>
    public bool Delete(string name)
    {
        CheckName(name, nameof(name));
        var path = PathOf(name);
        bool existed, changed;
        lock (_gate)
        {
            existed = File.Exists(path);
            File.Delete(path);
            existed |= _files.Remove(path);
            changed = Publish(initial: false);
        }
        if (changed) Changed?.Invoke();
        return existed;
    }

    public void Dispose()
    {
        _disposed = true;
        _watcher?.Dispose();
        _timer?.Dispose();
    }

    private void OnFileEvent(object? sender, FileSystemEventArgs e)
    {
        _touched[e.FullPath] = true;
        // Each event pushes the reload back: a file still being written is read once it has been quiet a while.
        try { _timer?.Change(_options.Debounce, _options.PollInterval); }
        catch (ObjectDisposedException) { } // an event that raced Dispose
    }

    private void Tick()
    {
        if (_disposed) return;
        bool changed;
        try
        {
            lock (_gate) changed = Rescan(initial: false);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // The listing itself failed (the files did not): keep serving what is loaded and retry next tick.
            (_options.Warn ?? _options.Log)?.Invoke($"steering packs: cannot scan {_directory}: {e.Message}");
            return;
        }
        if (changed) Changed?.Invoke();
    }

    private bool Rescan(bool initial)
    {
        var touched = new HashSet<string>(StringComparer.Ordinal);
        foreach (var path in _touched.Keys)
            if (_touched.TryRemove(path, out _)) touched.Add(path);
        var files = new Dictionary<string, FileState>(StringComparer.Ordinal);
        var paths = Directory.Exists(_directory) ? Directory.GetFiles(_directory, "*" + SteeringPack.Extension) : [];
        foreach (var path in paths)
        {
            var info = new FileInfo(path);
            if (!info.Exists) continue;
            var known = _files.GetValueOrDefault(path);
            var state = known is not null && known.Stamp == StampOf(info) && !touched.Contains(path)
                ? known
                : ReadFile(path, StampOf(info), known, initial);
            if (state is not null) files[path] = state;
        }
        _files = files;
        return Publish(initial);
    }

    /// <returns>The file's new state, or null if it vanished before it could be read.</returns>
    private FileState? ReadFile(string path, (long, DateTime) stamp, FileState? known, bool initial)
    {
        try
        {
            var bytes = File.ReadAllBytes(path);
            var sha = Convert.ToHexStringLower(SHA256.HashData(bytes));
            // The same bytes keep their pack object, so rewriting or touching a file is not a new version.
            if (known is { Pack: not null } && known.Sha256 == sha) return new FileState(stamp, known.Pack, sha, null);
            var name = Path.GetFileName(path)[..^SteeringPack.Extension.Length];
            if (!IsName(name)) throw new InvalidDataException($"{path}: '{name}' is not a valid pack name");
            return new FileState(stamp, Validate(name, bytes, path), sha, null);
        }
        catch (FileNotFoundException)
        {
            return null;
        }
        catch (Exception e) when (e is InvalidDataException or IOException or UnauthorizedAccessException)
        {
            if (!initial)
                (_options.Warn ?? _options.Log)?.Invoke($"steering packs: refused {path}: {e.Message}"
                    + (known?.Pack is { } kept ? $"; still serving {Describe(kept)}" : ""));
            return new FileState(stamp, known?.Pack, known?.Sha256, e.Message);
        }
    }

    private SteeringPack Validate(string name, byte[] bytes, string source)
    {
        var pack = SteeringPack.Read(bytes, source, _manifest);
        if (pack.Name != name)
            throw new InvalidDataException($"{source}: holds pack '{pack.Name}', not '{name}' "
                + $"(pack NAME is stored as NAME{SteeringPack.Extension})");
        return pack;
    }

    /// <summary>Swaps in a snapshot of <see cref="_files"/> if it differs from the current one.</summary>
    private bool Publish(bool initial)
    {
        var old = _snapshot;
        var current = new SortedDictionary<string, SteeringPack>(StringComparer.Ordinal);
        var errors = ImmutableArray.CreateBuilder<PackLoadError>();
        foreach (var (path, state) in _files.OrderBy(f => f.Key, StringComparer.Ordinal))
        {
            if (state.Pack is { } pack) current[pack.Name] = pack;
            if (state.Error is { } error) errors.Add(new PackLoadError(path, error));
        }
        var replaced = current.Values.Where(p => old.Current.GetValueOrDefault(p.Name) != p).ToArray();
        var removed = old.Current.Keys.Where(n => !current.ContainsKey(n)).Order(StringComparer.Ordinal).ToArray();
        if (replaced.Length == 0 && removed.Length == 0 && errors.SequenceEqual(old.Errors)) return false;

        var history = old.History;
        foreach (var pack in replaced)
        {
            var held = history.GetValueOrDefault(pack.Name, [])
                .RemoveAll(p => p.Metadata.ContentSha256 == pack.Metadata.ContentSha256)
                .Insert(0, pack);
            history = history.SetItem(pack.Name, held.Length > _options.MaxVersionsPerName
                ? held.RemoveRange(_options.MaxVersionsPerName, held.Length - _options.MaxVersionsPerName)
                : held);
            if (!initial) _options.Log?.Invoke($"steering packs: serving {Describe(pack)}");
        }
        if (!initial)
            foreach (var name in removed) _options.Log?.Invoke($"steering packs: removed '{name}'");
        _snapshot = new Snapshot(current.ToFrozenDictionary(StringComparer.Ordinal), [.. current.Values], history,
            errors.ToImmutable(), initial ? 0 : old.Version + 1);
        return true;
    }

    private string PathOf(string name) => Path.Combine(_directory, name + SteeringPack.Extension);

    private static (long, DateTime) StampOf(FileInfo info) => (info.Length, info.LastWriteTimeUtc);

    private static string Describe(SteeringPack pack) => $"{pack.Name}@{pack.Metadata.ContentSha256[..12]}";

    private static string Loaded(Snapshot snapshot) =>
        snapshot.Listing.IsEmpty ? "none" : string.Join(", ", snapshot.Listing.Select(p => p.Name));

    private static (string Name, string? Pin) ParseReference(string reference, string field)
    {
        var at = reference?.IndexOf('@', StringComparison.Ordinal) ?? -1;
        var name = at < 0 ? reference : reference![..at];
        CheckName(name, field);
        if (at < 0) return (name!, null);
        var pin = reference![(at + 1)..];
        if (pin.Length is < MinPinLength or > 64 || !pin.All(char.IsAsciiHexDigit))
            throw new FieldValidationException(field,
                $"'{reference}': after '@' give {MinPinLength} to 64 hex digits of the version's content sha256");
        return (name!, pin.ToLowerInvariant());
    }

    private static void CheckName(string? name, string field)
    {
        if (string.IsNullOrEmpty(name)) throw new FieldValidationException(field, "is empty; give a pack name");
        if (!IsName(name))
            throw new FieldValidationException(field, $"'{name}' is not a pack name (up to {MaxNameLength} of "
                + "A-Z a-z 0-9 . _ -, not starting with '.' and without '..')");
    }

    // Names become file names, so nothing that could leave the directory, hide a file or collide with temp files.
    private static bool IsName(string name) =>
        name.Length is > 0 and <= MaxNameLength && name[0] != '.' && !name.Contains("..", StringComparison.Ordinal)
        && name.All(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or '-');

    /// <summary>One file as last seen. Pack is its last good read, still served while Error is set.</summary>
    private sealed record FileState((long, DateTime) Stamp, SteeringPack? Pack, string? Sha256, string? Error);

    private sealed record Snapshot(
        FrozenDictionary<string, SteeringPack> Current,
        ImmutableArray<SteeringPack> Listing,
        ImmutableDictionary<string, ImmutableArray<SteeringPack>> History,
        ImmutableArray<PackLoadError> Errors,
        long Version)
    {
        public static readonly Snapshot Empty = new(FrozenDictionary<string, SteeringPack>.Empty, [],
            ImmutableDictionary.Create<string, ImmutableArray<SteeringPack>>(StringComparer.Ordinal), [], 0);
    }
}
