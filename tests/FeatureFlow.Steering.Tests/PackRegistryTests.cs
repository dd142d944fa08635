using System.Collections.Concurrent;
using FeatureFlow.Models;
using FeatureFlow.Models.Folder;
using FeatureFlow.Steering.Packs;

namespace FeatureFlow.Steering.Tests;

public sealed class PackRegistryTests : IDisposable
{
    private const string Field = "steering.terms[0].pack.name";
    private static readonly ModelManifest Manifest = ModelFolder.Open(RepoPaths.Stories260kModel).Manifest;
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(15);

    private readonly string _root = Directory.CreateTempSubdirectory("featureflow-registry-").FullName;
    private readonly ConcurrentQueue<string> _log = new();
    private readonly List<PackRegistry> _registries = [];

    private string PacksDir => Path.Combine(_root, "packs");

    public void Dispose()
    {
        foreach (var registry in _registries) registry.Dispose();
        Directory.Delete(_root, true);
    }

    /// <summary>A pack whose coefficient sets its hash and whose term count sets its file size.</summary>
    private static SteeringPack Pack(string name, float coefficient, int terms = 1, string? fingerprint = null)
    {
        var decoder = Numerics.RandomVector(new Random(1), 64);
        return new SteeringPack(
            new PackMetadata { Name = name, ModelFingerprint = fingerprint ?? SteeringPack.Fingerprint(Manifest) },
            Enumerable.Range(0, terms)
                .Select(i => new SteeringTerm(new Site(i % 5, SiteKind.ResidPost), SteeringOperation.Add, coefficient,
                    new FeatureVector(decoder)))
                .ToArray());
    }

    private PackRegistry Open(bool watch)
    {
        var registry = PackRegistry.Load(PacksDir, Manifest, new PackRegistryOptions
        {
            Watch = watch, PollInterval = TimeSpan.FromMilliseconds(50), Debounce = TimeSpan.FromMilliseconds(20),
            Log = _log.Enqueue,
        });
        _registries.Add(registry);
        return registry;
    }

    /// <summary>Deploys a file the way an operator's copy tool would: written aside, then renamed into place.</summary>
    private void Deploy(string name, byte[] bytes)
    {
        Directory.CreateDirectory(PacksDir);
        var temp = Path.Combine(_root, name + ".partial");
        File.WriteAllBytes(temp, bytes);
        File.Move(temp, Path.Combine(PacksDir, name + SteeringPack.Extension), overwrite: true);
    }

    private static void WaitForReload(PackRegistry registry, long after, Func<bool> reloaded) =>
        Assert.True(SpinWait.SpinUntil(() => registry.Version > after && reloaded(), Timeout),
            $"no reload within {Timeout} (version {registry.Version})");

    [Fact]
    public void A_pin_by_hash_prefix_resolves_an_older_version_and_the_bare_name_the_newest()
    {
        var registry = Open(watch: false);
        var v1 = registry.Put("p", Pack("p", 1f).ToBytes());
        var v2 = registry.Put("p", Pack("p", 2f).ToBytes());
        Assert.NotEqual(v1.Metadata.ContentSha256, v2.Metadata.ContentSha256);

        Assert.Same(v2, registry.Get("p", Field));
        Assert.Same(v1, registry.Get("p@" + v1.Metadata.ContentSha256[..6], Field));
        Assert.Same(v1, registry.Get("p@" + v1.Metadata.ContentSha256.ToUpperInvariant(), Field));
        Assert.Same(v2, registry.Get("p@" + v2.Metadata.ContentSha256[..10], Field));
        Assert.Equal([v2, v1], registry.Versions("p"));
        Assert.Equal([v2], registry.Packs);

        var unknown = Assert.Throws<PackNotFoundException>(() => registry.Get("p@000000", Field));
        Assert.Equal(Field, unknown.Field);
        Assert.Contains("p@" + v1.Metadata.ContentSha256[..12], unknown.Message);
        Assert.Throws<PackNotFoundException>(() => registry.Get("q@" + v1.Metadata.ContentSha256[..6], Field));
    }

    [Fact]
    public void A_short_malformed_or_ambiguous_pin_is_invalid_rather_than_missing()
    {
        // Find two versions whose hashes share 6 hex digits (a birthday search: a few thousand tries).
        var byPrefix = new Dictionary<string, SteeringPack>();
        SteeringPack a, b;
        for (var i = 0; ; i++)
        {
            var pack = Pack("p", i);
            if (byPrefix.TryGetValue(pack.Metadata.ContentSha256[..6], out var twin)) { (a, b) = (twin, pack); break; }
            byPrefix[pack.Metadata.ContentSha256[..6]] = pack;
        }
        var registry = Open(watch: false);
        registry.Put("p", a.ToBytes());
        registry.Put("p", b.ToBytes());

        var (hashA, hashB) = (a.Metadata.ContentSha256, b.Metadata.ContentSha256);
        var shared = hashA[..6];
        var ambiguous = Assert.Throws<FieldValidationException>(() => registry.Get("p@" + shared, Field));
        Assert.Contains("2 versions", ambiguous.Message);
        var distinct = Enumerable.Range(7, 58).First(n => hashA[..n] != hashB[..n]);
        Assert.Equal(hashA, registry.Get("p@" + hashA[..distinct], Field).Metadata.ContentSha256);

        foreach (var pin in new[] { shared[..5], "", "zzzzzz", shared + "@" + shared, new string('a', 65) })
        {
            var e = Assert.Throws<FieldValidationException>(() => registry.Get("p@" + pin, Field));
            Assert.Equal(Field, e.Field);
        }
    }

    [Theory]
    [InlineData("../secret")]
    [InlineData("..")]
    [InlineData("a/../../secret")]
    [InlineData("/tmp/secret")]
    [InlineData(@"..\secret")]
    [InlineData("a\\b")]
    [InlineData("")]
    [InlineData(".hidden")]
    [InlineData("a..b")]
    [InlineData("name with spaces")]
    [InlineData("naïve")]
    [InlineData("x\0y")]
    public void Path_like_or_odd_names_are_invalid_and_never_reach_the_file_system(string name)
    {
        var registry = Open(watch: false);
        // A valid pack where "../secret" would lead if names were paths.
        var secret = Path.Combine(_root, "secret" + SteeringPack.Extension);
        var bytes = Pack("secret", 1f).ToBytes();
        File.WriteAllBytes(secret, bytes);

        foreach (var reference in new[] { name, name + "@abcdef" })
        {
            var e = Assert.Throws<FieldValidationException>(() => registry.Get(reference, Field));
            Assert.Equal(Field, e.Field);
        }
        Assert.Throws<FieldValidationException>(() => registry.Put(name, bytes));
        Assert.Throws<FieldValidationException>(() => registry.Delete(name));
        Assert.Throws<FieldValidationException>(() => registry.Versions(name));
        Assert.Equal(bytes, File.ReadAllBytes(secret));
        Assert.False(Directory.Exists(PacksDir));
    }

    [Fact]
    public void A_replaced_file_is_served_after_a_reload_and_an_already_resolved_pack_is_unchanged()
    {
        Deploy("p", Pack("p", 1f).ToBytes());
        var registry = Open(watch: true);
        var resolved = registry.Get("p", Field);
        var terms = resolved.Terms.Select(t => (t.Site, t.Value)).ToArray();
        var changes = 0;
        registry.Changed += () => Interlocked.Increment(ref changes);

        var version = registry.Version;
        var replacement = Pack("p", 5f, terms: 2);
        Deploy("p", replacement.ToBytes());
        WaitForReload(registry, version, () => registry.Get("p", Field) != resolved);

        Assert.Equal(replacement.Metadata.ContentSha256, registry.Get("p", Field).Metadata.ContentSha256);
        Assert.Equal(terms, resolved.Terms.Select(t => (t.Site, t.Value)));
        Assert.Same(resolved, registry.Get("p@" + resolved.Metadata.ContentSha256[..8], Field));
        Assert.True(Volatile.Read(ref changes) >= 1);
        var served = "p@" + replacement.Metadata.ContentSha256[..12];
        Assert.Contains(_log, line => line.Contains(served, StringComparison.Ordinal));
        Assert.Empty(registry.Errors);
    }

    public static TheoryData<string, string> BadReplacements => new()
    {
        { "truncated", "header length" },
        { "foreign", "gpt2:abc" },
        { "renamed", "holds pack 'other'" },
    };

    [Theory]
    [MemberData(nameof(BadReplacements))]
    public void A_bad_replacement_is_refused_with_its_reason_and_the_old_version_serves_on(string kind, string reason)
    {
        Deploy("p", Pack("p", 1f).ToBytes());
        var registry = Open(watch: true);
        var good = registry.Get("p", Field);

        var version = registry.Version;
        Deploy("p", kind switch
        {
            "truncated" => Pack("p", 2f, terms: 3).ToBytes()[..100],
            "foreign" => Pack("p", 2f, terms: 3, fingerprint: "gpt2:abc:d768:L12").ToBytes(),
            _ => Pack("other", 2f, terms: 3).ToBytes(),
        });
        WaitForReload(registry, version, () => registry.Errors.Count > 0);

        var error = Assert.Single(registry.Errors);
        Assert.Equal(Path.Combine(PacksDir, "p" + SteeringPack.Extension), error.Path);
        Assert.Contains(reason, error.Message);
        Assert.Same(good, registry.Get("p", Field));
        Assert.Equal([good], registry.Packs);
        Assert.Contains(_log, line =>
            line.Contains(reason, StringComparison.Ordinal) && line.Contains("still serving", StringComparison.Ordinal));

        version = registry.Version;
        var fixedPack = Pack("p", 3f, terms: 2);
        Deploy("p", fixedPack.ToBytes());
        WaitForReload(registry, version, () => registry.Errors.Count == 0);
        Assert.Equal(fixedPack.Metadata.ContentSha256, registry.Get("p", Field).Metadata.ContentSha256);
    }

    [Fact]
    public void A_deleted_file_makes_the_name_not_found_while_its_pinned_versions_still_resolve()
    {
        Deploy("p", Pack("p", 1f).ToBytes());
        Deploy("q", Pack("q", 1f).ToBytes());
        var registry = Open(watch: true);
        var old = registry.Get("p", Field);

        var version = registry.Version;
        File.Delete(Path.Combine(PacksDir, "p" + SteeringPack.Extension));
        WaitForReload(registry, version, () => registry.Packs.Count == 1);

        var e = Assert.Throws<PackNotFoundException>(() => registry.Get("p", Field));
        Assert.Equal(Field, e.Field);
        Assert.Contains("loaded: q", e.Message);
        Assert.Same(old, registry.Get("p@" + old.Metadata.ContentSha256[..6], Field));
        Assert.Equal([old], registry.Versions("p"));
    }

    [Fact]
    public void Polling_finds_packs_in_a_directory_created_after_loading()
    {
        var registry = Open(watch: true); // no directory, so nothing to watch: only polling can notice
        Assert.Empty(registry.Packs);
        Deploy("late", Pack("late", 1f).ToBytes());
        WaitForReload(registry, 0, () => registry.Packs.Count == 1);
        Assert.Equal("late", registry.Get("late", Field).Name);
    }

    [Fact]
    public void Put_and_Delete_take_effect_at_once_and_store_exactly_one_file()
    {
        var registry = Open(watch: false);
        var changes = 0;
        registry.Changed += () => changes++;

        var pack = registry.Put("p", Pack("p", 1f).ToBytes());
        Assert.Same(pack, registry.Get("p", Field));
        Assert.Equal((1L, 1), (registry.Version, changes));
        Assert.Equal(["p" + SteeringPack.Extension], Directory.GetFiles(PacksDir).Select(Path.GetFileName));
        var stored = SteeringPack.Read(Path.Combine(PacksDir, "p" + SteeringPack.Extension), Manifest);
        Assert.Equal(pack.Metadata.ContentSha256, stored.Metadata.ContentSha256);

        Assert.Same(pack, registry.Put("p", Pack("p", 1f).ToBytes())); // the same bytes are not a new version
        Assert.Equal(1L, registry.Version);

        Assert.True(registry.Delete("p"));
        Assert.Throws<PackNotFoundException>(() => registry.Get("p", Field));
        Assert.Empty(Directory.GetFiles(PacksDir));
        Assert.Equal((2L, 2), (registry.Version, changes));
        Assert.False(registry.Delete("p"));

        // A fresh registry over the directory agrees with what Put and Delete did.
        registry.Put("q", Pack("q", 1f).ToBytes());
        Assert.Equal(["q"], Open(watch: false).Packs.Select(p => p.Name));
    }

    public static TheoryData<string, string> BadUploads => new()
    {
        { "truncated", "do not fit" },
        { "empty", "too short" },
        { "garbage", "header length" },
        { "json array header", "malformed" },
        { "foreign", "gpt2:abc" },
        { "altered", "content hash" },
        { "renamed", "holds pack 'other', not 'p'" },
    };

    [Theory]
    [MemberData(nameof(BadUploads))]
    public void Put_refuses_what_a_file_would_be_refused_for_and_keeps_the_current_version(string kind, string reason)
    {
        var registry = Open(watch: false);
        var current = registry.Put("p", Pack("p", 1f).ToBytes());
        var altered = Pack("p", 2f).ToBytes();
        altered[^1] ^= 0x40;
        var bytes = kind switch
        {
            "truncated" => Pack("p", 2f).ToBytes()[..^10],
            "empty" => [],
            "garbage" => "not a pack at all"u8.ToArray(),
            "json array header" => [2, 0, 0, 0, 0, 0, 0, 0, (byte)'[', (byte)']'],
            "foreign" => Pack("p", 2f, fingerprint: "gpt2:abc:d768:L12").ToBytes(),
            "altered" => altered,
            _ => Pack("other", 2f).ToBytes(),
        };

        var e = Assert.Throws<InvalidDataException>(() => registry.Put("p", bytes));
        Assert.Contains(reason, e.Message);
        Assert.Same(current, registry.Get("p", Field));
        Assert.Equal(1L, registry.Version);
        Assert.Equal(["p" + SteeringPack.Extension], Directory.GetFiles(PacksDir).Select(Path.GetFileName));

        // The same bytes dropped in as a file are refused for the same reason.
        Deploy("p", bytes);
        var reloaded = Open(watch: false);
        Assert.Contains(reason, Assert.Single(reloaded.Errors).Message);
        Assert.Empty(reloaded.Packs);
    }

    [Fact]
    public void Held_versions_are_bounded_per_name_dropping_the_oldest()
    {
        var registry = PackRegistry.Load(PacksDir, Manifest, new PackRegistryOptions { MaxVersionsPerName = 2 });
        var versions = Enumerable.Range(1, 3).Select(i => registry.Put("p", Pack("p", i).ToBytes())).ToArray();
        Assert.Equal([versions[2], versions[1]], registry.Versions("p"));
        Assert.Throws<PackNotFoundException>(() => registry.Get("p@" + versions[0].Metadata.ContentSha256[..8], Field));
        Assert.Same(versions[1], registry.Get("p@" + versions[1].Metadata.ContentSha256[..8], Field));
    }
}
