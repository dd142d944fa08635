using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;

namespace FeatureFlow.Experiments;

/// <summary>
/// Sticky assignment of subjects to arms: a pure function of (salt, experiment, subject, arm names, weights,
/// traffic), so every process and machine agrees without shared state.
/// </summary>
/// <remarks>
/// Hashes are SHA-256 over length-prefixed UTF-8 fields (4-byte big-endian byte length, then the bytes), so no
/// choice of salt or subject id can make two different field lists hash alike. The first 52 bits of a hash, read
/// big-endian as k, make uniform numbers k / 2^52 in [0, 1) (enrolment) and (k + 0.5) / 2^52 in (0, 1) (arms).
/// docs/experiments.md spells out the exact inputs.
/// </remarks>
public static class Assignment
{
    /// <summary>The subject's arm, or null when the traffic share leaves it out of the experiment.</summary>
    public static string? Arm(Experiment e, string subjectId)
    {
        ArgumentNullException.ThrowIfNull(e);
        ArgumentException.ThrowIfNullOrEmpty(subjectId);
        // Enrolment uses its own hash so that raising traffic only adds subjects (those with u below the new
        // share) and never reshuffles the arms of subjects already enrolled.
        if (e.Traffic < 1 && Hash52("traffic", e.Salt, e.Name, subjectId) / Scale >= e.Traffic) return null;

        // Weighted rendezvous hashing: each arm draws u_i from a hash keyed by its name, score_i = -w_i / ln(u_i),
        // and the highest score wins. -ln(u_i)/w_i is an exponential variable with rate w_i, so the winner is
        // arm i with probability w_i / Σw. Because the draws do not depend on the other arms, changing one weight
        // only moves subjects into an arm whose weight grew or out of one whose weight shrank, adding or
        // removing an arm only moves subjects to or from that arm, and reordering arms moves nobody — unlike
        // cutting [0, 1) into weight-sized intervals, where one change shifts every boundary after it.
        string? best = null;
        var bestScore = double.NegativeInfinity;
        foreach (var arm in e.Arms)
        {
            // Centred in its bucket so u is never 0 (score 0) or 1 (ln u = 0); k + 0.5 is exact with 52 bits.
            var u = (Hash52("arm", e.Salt, e.Name, subjectId, arm.Name) + 0.5) / Scale;
            var score = -arm.Weight / Math.Log(u);
            if (score > bestScore || (score == bestScore && string.CompareOrdinal(arm.Name, best) < 0))
            {
                best = arm.Name;
                bestScore = score;
            }
        }
        return best;
    }

    private const double Scale = 1UL << 52;

    /// <summary>The first 52 bits of SHA-256 over the length-prefixed fields.</summary>
    private static ulong Hash52(params ReadOnlySpan<string> fields)
    {
        var size = 0;
        foreach (var f in fields) size += 4 + Encoding.UTF8.GetByteCount(f);
        var input = new byte[size];
        var at = 0;
        foreach (var f in fields)
        {
            var n = Encoding.UTF8.GetBytes(f, input.AsSpan(at + 4));
            BinaryPrimitives.WriteInt32BigEndian(input.AsSpan(at), n);
            at += 4 + n;
        }
        Span<byte> hash = stackalloc byte[SHA256.HashSizeInBytes];
        SHA256.HashData(input, hash);
        return BinaryPrimitives.ReadUInt64BigEndian(hash) >> 12;
    }
}
