using FeatureFlow.Engine;
using FeatureFlow.Steering;

namespace FeatureFlow.Server.Security;

/// <summary>
/// Per-caller admission (<see cref="Caller.Id"/>: an API key, or a client address without keys): at most
/// <see cref="ServerLimits.MaxStreamsPerKey"/> running streams, and a token bucket of
/// <see cref="ServerLimits.TokensPerMinutePerKey"/>. A request reserves max_tokens × rows when admitted; its
/// <see cref="Lease"/> returns the stream and the tokens its rows did not generate when it ends. Refusals are
/// <see cref="EngineOverloadedException"/>s naming the limit: both transports answer them as they answer a full queue.
/// </summary>
public sealed class CallerLimiter(ServerLimits limits)
{
    private sealed class State
    {
        public int Streams;
        public double Tokens;
        public long RefilledAt;
    }

    private readonly Dictionary<string, State> _states = new(StringComparer.Ordinal);
    private readonly TimeProvider _clock = limits.Clock;
    private int _sweepAt = 1024;

    /// <summary>
    /// Admits a request of <paramref name="rows"/> rows (n choices, Compare arms) of <paramref name="maxTokens"/> each
    /// for <paramref name="caller"/>, or throws; one that the bucket could never admit is refused as a bad max_tokens.
    /// </summary>
    public Lease Admit(Caller caller, int maxTokens, int rows)
    {
        var reserve = (long)maxTokens * rows;
        var capacity = limits.TokensPerMinutePerKey;
        if (reserve > capacity)
            throw new FieldValidationException("max_tokens",
                $"{maxTokens} × {rows} rows = {reserve} tokens exceed tokens_per_minute_per_key {capacity}");
        lock (_states)
        {
            var now = _clock.GetTimestamp();
            if (_states.Count > _sweepAt) Sweep(now);
            if (!_states.TryGetValue(caller.Id, out var state))
                _states[caller.Id] = state = new State { Tokens = capacity ?? 0, RefilledAt = now };
            if (state.Streams >= limits.MaxStreamsPerKey)
                throw new EngineOverloadedException("max_streams_per_key",
                    $"{state.Streams} streams of this caller are running; retry when one ends",
                    TimeSpan.FromSeconds(1));
            if (capacity is { } c)
            {
                Refill(state, c, now);
                if (state.Tokens < reserve)
                {
                    var wait = TimeSpan.FromSeconds((reserve - state.Tokens) * 60 / c);
                    throw new EngineOverloadedException("tokens_per_minute_per_key",
                        $"this request reserves {reserve} tokens (max_tokens × rows) and the caller has "
                        + $"{Math.Floor(state.Tokens):0} left; retry in about {Math.Ceiling(wait.TotalSeconds):0} s",
                        wait);
                }
                state.Tokens -= reserve;
            }
            state.Streams++;
            return new Lease(this, caller.Id, reserve);
        }
    }

    private void Refill(State state, int capacity, long now)
    {
        var minutes = _clock.GetElapsedTime(state.RefilledAt, now).TotalMinutes;
        state.Tokens = Math.Min(capacity, state.Tokens + minutes * capacity);
        state.RefilledAt = now;
    }

    private void End(string id, long unused)
    {
        lock (_states)
        {
            var state = _states[id];
            state.Streams--;
            if (limits.TokensPerMinutePerKey is { } c) state.Tokens = Math.Min(c, state.Tokens + unused);
        }
    }

    // An idle caller with a full bucket is the same as one never seen: dropping it bounds the table by the active
    // callers (addresses without keys can be many). Amortised: the next sweep waits until the table has doubled.
    private void Sweep(long now)
    {
        foreach (var (id, state) in _states.ToArray())
        {
            if (state.Streams > 0) continue;
            if (limits.TokensPerMinutePerKey is { } c) Refill(state, c, now);
            if (limits.TokensPerMinutePerKey is not { } full || state.Tokens >= full) _states.Remove(id);
        }
        _sweepAt = Math.Max(1024, 2 * _states.Count);
    }

    /// <summary>One admitted request's stream and reserved tokens, given back once by <see cref="End"/>.</summary>
    public sealed class Lease(CallerLimiter limiter, string id, long reserved)
    {
        private int _ended;

        /// <summary>Ends the stream and refunds the reserved tokens that were not generated.</summary>
        public void End(long generated)
        {
            if (Interlocked.Exchange(ref _ended, 1) == 0) limiter.End(id, Math.Max(0, reserved - generated));
        }
    }
}
