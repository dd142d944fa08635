using System.Diagnostics;
using System.Numerics.Tensors;
using FeatureFlow.Engine;
using FeatureFlow.Flow;
using FeatureFlow.Models;
using FeatureFlow.Sae;
using FeatureFlow.Steering;

namespace FeatureFlow.Evaluation;

/// <summary>How a predecessor feature is switched off on the intervention token.</summary>
public enum Deactivation
{
    /// <summary>
    /// RESCALE r = 0: h ← h − a(h)·v, the feature's decoder contribution removed (the paper's rescale, and the
    /// usual SAE latent ablation). Re-encoding the result still reads a(h)·(1 − e·v) of the feature, because
    /// the encoder row e is not the decoder row v (e·v is about 0.6 in the shipped SAEs).
    /// </summary>
    Remove,
    /// <summary>
    /// RESCALE r = 1 − 1/(e·v): h ← h − a(h)·v/(e·v), which moves far enough along v that the feature's own
    /// hook pre-activation e·h + b becomes exactly 0.
    /// </summary>
    Zero,
}

/// <summary>Where the deactivated predecessors of a target at R(L) sit.</summary>
public enum MatchSite
{
    /// <summary>R(L−1); layer 0 has none.</summary>
    Resid,
    /// <summary>M(L).</summary>
    Mlp,
    /// <summary>A(L).</summary>
    Attn,
    /// <summary>R(L−1), M(L) and A(L) together.</summary>
    All,
}

public sealed record MatchValidationOptions
{
    /// <summary>Stories the model writes itself from BOS, story i with sampling seed <see cref="Seed"/> + i.</summary>
    public int Sequences { get; init; } = 64;
    /// <summary>Tokens per story, BOS included.</summary>
    public int Tokens { get; init; } = 64;
    /// <summary>Tokens drawn from the stories; each gives one (token, target) sample per layer.</summary>
    public int SamplesPerLayer { get; init; } = 512;
    public ulong Seed { get; init; } = 1;
    public float Temperature { get; init; } = 1f;
    public float TopP { get; init; } = 0.9f;
    public Deactivation Deactivation { get; init; } = Deactivation.Remove;
    /// <summary>
    /// A feature is active when its hook activation exceeds this, and a target counts as turned off when it is
    /// at most this. The hook's JumpReLU gives exactly 0 or more than θ, so 0 needs no tolerance; a positive
    /// value is for ReLU SAEs (θ = 0), whose pre-activations can sit just above 0.
    /// </summary>
    public float Epsilon { get; init; }
    /// <summary>Tokens evaluated at once, each on its own decoder state.</summary>
    public int Parallelism { get; init; } = Environment.ProcessorCount;

    public void Validate(int contextLength)
    {
        if (Sequences < 1) throw new ArgumentException($"sequences must be at least 1, got {Sequences}");
        if (Tokens < 2 || Tokens > contextLength)
            throw new ArgumentException($"tokens must be in 2..{contextLength} (BOS and more), got {Tokens}");
        var positions = (long)Sequences * (Tokens - 1);
        if (SamplesPerLayer < 1 || SamplesPerLayer > positions)
            throw new ArgumentException(
                $"samples per layer must be in 1..{positions} (the stories' tokens after BOS), got {SamplesPerLayer}");
        if (!(Epsilon >= 0)) throw new ArgumentException($"epsilon must be ≥ 0, got {Epsilon}");
        if (Parallelism < 1) throw new ArgumentException($"parallelism must be at least 1, got {Parallelism}");
    }
}

/// <summary>A set of deactivated features and the target's hook activation afterwards.</summary>
public sealed record Intervention(IReadOnlyList<FeatureId> Deactivated, float After);

/// <summary>
/// One (token, target, predecessor site) sample. <see cref="Matches"/> are the flow map's top-1 cosine matches at
/// the site (three for <see cref="MatchSite.All"/> above layer 0). The three interventions run only when a match is
/// active on the token (<see cref="MatchActive"/>), at the sites of the active matches; otherwise they are null.
/// </summary>
public sealed record MatchSample(
    MatchSite Site, int Layer, int Sequence, int Position, int Token, int Target, float Before,
    IReadOnlyList<(FeatureId Feature, float Score)> Matches, bool MatchActive,
    Intervention? Top1, Intervention? Random, Intervention? Exhaustive);

/// <summary>Mean active features per token at one kind of site: the hook's, the TopK SAE's, their overlap.</summary>
/// <param name="HookActive">features the hook's JumpReLU fires (the random and exhaustive candidates)</param>
/// <param name="TopKActive">features the TopK SAE keeps</param>
/// <param name="TopKCovered">share of the TopK SAE's features that the hook also fires</param>
public sealed record HookAgreement(SiteKind Kind, double HookActive, double TopKActive, double TopKCovered);

/// <summary>One evaluated token: its samples, the active-set sizes at each site, and the batch rows it ran.</summary>
public sealed record TokenEvaluation(
    IReadOnlyList<MatchSample> Samples, IReadOnlyList<(Site Site, int Hook, int TopK, int Both)> Agreement, int Rows);

/// <summary>Outputs of the unsteered prefix (positions 0..t−1) and of the intervention token t, per row.</summary>
public sealed record TokenRun(StepOutput Prefix, StepOutput Token);

/// <summary>
/// Match validation (Laptev et al. 2025): does switching off a residual feature's top-1 cosine predecessor switch
/// the feature off? For a sampled token and an active target at R(L), each predecessor candidate is deactivated on
/// that token only (the prefix runs unsteered, the token runs with a RESCALE term at the candidate's site) and the
/// target is read at R(L) on the same token. Candidates: the flow map's top-1 match, a random active feature at the
/// same site, and every active feature there (the exhaustive search keeps the one that lowers the target most).
/// Activations are the steering hook's a(h) = JumpReLU_θ(e·h + b) from the SAE's hook form, for targets and
/// predecessors alike; for a TopK SAE the per-feature thresholds only approximate top-k selection
/// (<see cref="HookAgreement"/> says how closely, on the sampled tokens).
/// </summary>
public sealed class MatchValidator
{
    private readonly HookedDecoder _decoder;
    private readonly FlowMap _map;
    private readonly MatchValidationOptions _options;
    private readonly SteeringCompiler _compiler;
    private readonly SteeringTensors _identity;
    private readonly Dictionary<Site, HookForm> _hooks = [];
    private readonly Site[] _sites, _residSites;

    public MatchValidator(HookedDecoder decoder, SaeSet saes, FlowMap map, MatchValidationOptions options)
    {
        var shape = decoder.SteeringShape
                    ?? throw new InvalidOperationException("match validation needs the hooked graph");
        var layers = decoder.Architecture.Layers;
        if (map.Layers != layers)
            throw new InvalidDataException($"the flow map has {map.Layers} layers, the model {layers}");
        _decoder = decoder;
        _map = map;
        _options = options;
        _compiler = new SteeringCompiler(shape);
        _identity = new SteeringTensors(shape);
        _sites = Site.All(layers).ToArray();
        _residSites = _sites.Where(s => s.Kind == SiteKind.ResidPost).ToArray();
        foreach (var site in _sites)
            _hooks[site] = saes.BySite.TryGetValue(site, out var sae)
                ? new HookForm(sae)
                : throw new InvalidDataException($"match validation needs an SAE at every site; {site} has none");
    }

    /// <summary>The hook activations a(h) of every feature of the SAE at <paramref name="site"/>.</summary>
    public float[] Activations(Site site, ReadOnlySpan<float> h) => _hooks[site].Activations(h);

    /// <summary>Steering tensors that deactivate <paramref name="features"/> (up to a site's slots each).</summary>
    public SteeringTensors Deactivate(IEnumerable<FeatureId> features) => _compiler.Compile(new SteeringSpec(
        features.Select(f => _hooks[f.Site].Term(f.Index, _options.Deactivation)).ToArray())).Prompt;

    /// <summary>
    /// Runs <paramref name="tokens"/>[0..position) unsteered on every row, then the token at
    /// <paramref name="position"/> with each row's own steering: one intervention per row on that token only, all
    /// rows sharing the prefix. Site values come back for <paramref name="readout"/> on the token and for
    /// <paramref name="prefixReadout"/> on the prefix.
    /// </summary>
    public TokenRun RunAtToken(ReadOnlySpan<int> tokens, int position, IReadOnlyList<SteeringTensors> rows,
        IReadOnlyList<Site> readout, IReadOnlyList<Site>? prefixReadout = null)
    {
        if (position < 1 || position >= tokens.Length)
            throw new ArgumentOutOfRangeException(nameof(position), $"{position} is not in 1..{tokens.Length - 1}");
        var batch = rows.Count;
        var prefix = new int[batch * position];
        for (var r = 0; r < batch; r++) tokens[..position].CopyTo(prefix.AsSpan(r * position));
        using var state = _decoder.NewState(batch);
        StepOutput before;
        using (var identity = _decoder.Bind(Enumerable.Repeat(_identity, batch).ToArray()))
            before = _decoder.Run(state, prefix, identity, prefixReadout ?? []);
        using var steering = _decoder.Bind(rows);
        var token = Enumerable.Repeat(tokens[position], batch).ToArray();
        return new TokenRun(before, _decoder.Run(state, token, steering, readout));
    }

    /// <summary>
    /// Evaluates one token: a random active target at every layer's R(L) (or the given <paramref name="targets"/>,
    /// layer → feature, where active), and at each of its predecessor sites the three interventions.
    /// <paramref name="random"/> draws the targets and the random candidates.
    /// </summary>
    public TokenEvaluation Evaluate(int sequence, int[] tokens, int position, Random random,
        IReadOnlyDictionary<int, int>? targets = null)
    {
        // Pass 0: the unsteered values at every site on the token, by the same prefix-then-token arithmetic that
        // the intervention rows use.
        var unsteered = RunAtToken(tokens, position, [_identity], _sites).Token.Sites;
        var activations = _sites.Select(s => Activations(s, unsteered[s.Index])).ToArray();
        var agreement = _sites
            .Select(s => _hooks[s].Agreement(unsteered[s.Index], activations[s.Index], _options.Epsilon)).ToArray();
        var plans = new List<LayerPlan>();
        foreach (var site in _residSites)
        {
            var active = Active(activations[site.Index]);
            int target;
            if (targets is null)
            {
                if (active.Length == 0) continue;
                target = active[random.Next(active.Length)];
            }
            else if (!targets.TryGetValue(site.Layer, out target) || Array.IndexOf(active, target) < 0) continue;
            var p = _map.Explain(new FeatureId(site, target));
            var sources = new List<SourcePlan>();
            (MatchSite, (FeatureId Feature, float Score)?)[] matches =
                [(MatchSite.Resid, p.Resid), (MatchSite.Mlp, p.Mlp), (MatchSite.Attn, p.Attn)];
            foreach (var (kind, match) in matches)
            {
                if (match is not { } m) continue;
                var candidates = Active(activations[m.Feature.Site.Index]);
                // Drawn even where the match is off, so one site's match does not shift the draws at the others.
                var pick = candidates.Length == 0 ? -1 : random.Next(candidates.Length);
                sources.Add(new SourcePlan(kind, m, candidates, pick));
            }
            plans.Add(new LayerPlan(site.Layer, target, activations[site.Index][target], sources));
        }

        // Pass 1: one row per active feature at each site whose top-1 match is active (the match and the random
        // pick are among them), so the exhaustive search costs one batch.
        var rows = new List<SteeringTensors>();
        var firstRow = new Dictionary<Site, int>();
        foreach (var source in plans.SelectMany(p => p.Sources).Where(s => s.MatchActive))
        {
            firstRow[source.Site] = rows.Count;
            rows.AddRange(source.Candidates.Select(j => Deactivate([new FeatureId(source.Site, j)])));
        }
        float[][] single = rows.Count == 0 ? [] : RunAtToken(tokens, position, rows, _residSites).Token.Sites;
        foreach (var plan in plans)
            foreach (var source in plan.Sources.Where(s => s.MatchActive))
                source.Measured(source.Candidates.Select((_, i) =>
                    TargetAfter(single, firstRow[source.Site] + i, plan)));

        // Pass 2: per layer, each choice at all the sites with an active match at once.
        var combined = plans.Where(p => p.Sources.Any(s => s.MatchActive)).ToArray();
        var together = combined.SelectMany(p => p.Choices()).ToArray();
        float[][] all = together.Length == 0
            ? []
            : RunAtToken(tokens, position, together.Select(Deactivate).ToArray(), _residSites).Token.Sites;

        var samples = new List<MatchSample>();
        foreach (var plan in plans)
        {
            MatchSample Sample(MatchSite kind, IReadOnlyList<(FeatureId, float)> matches, bool on,
                Intervention? top1, Intervention? randomPick, Intervention? exhaustive) =>
                new(kind, plan.Layer, sequence, position, tokens[position], plan.Target, plan.Before, matches, on,
                    top1, randomPick, exhaustive);
            foreach (var s in plan.Sources)
                samples.Add(Sample(s.Kind, [s.Match], s.MatchActive, s.At(s.MatchIndex), s.At(s.Pick), s.At(s.Best)));
            var index = Array.IndexOf(combined, plan);
            Intervention? Together(int choice) => index < 0
                ? null
                : new Intervention(together[3 * index + choice], TargetAfter(all, 3 * index + choice, plan));
            samples.Add(Sample(MatchSite.All, plan.Sources.Select(s => s.Match).ToArray(), index >= 0,
                Together(0), Together(1), Together(2)));
        }
        return new TokenEvaluation(samples, agreement, 1 + rows.Count + together.Length);
    }

    /// <summary>Evaluates <see cref="MatchValidationOptions.SamplesPerLayer"/> sampled tokens of the stories.</summary>
    public IReadOnlyList<TokenEvaluation> EvaluateSample(int[][] stories, Action<int, int>? progress = null)
    {
        var picks = SampleTokens(stories.Length, stories[0].Length, _options);
        var results = new TokenEvaluation[picks.Length];
        var done = 0;
        var gate = new object();
        Parallel.For(0, picks.Length, new ParallelOptions { MaxDegreeOfParallelism = _options.Parallelism }, i =>
        {
            var (s, t) = picks[i];
            // Each token has its own stream, so the draws do not depend on which thread ran what first.
            var random = new Random(Mix(_options.Seed, ((ulong)(uint)s << 32 | (uint)t) + 1));
            results[i] = Evaluate(s, stories[s], t, random);
            lock (gate) progress?.Invoke(++done, picks.Length);
        });
        return results;
    }

    /// <summary>Distinct (story, position) pairs, after BOS (BOS is the same token in every story).</summary>
    public static (int Sequence, int Position)[] SampleTokens(int sequences, int tokens, MatchValidationOptions options)
    {
        var count = sequences * (tokens - 1);
        var order = Enumerable.Range(0, count).ToArray();
        var random = new Random(Mix(options.Seed, 0));
        for (var i = 0; i < options.SamplesPerLayer; i++)
        {
            var j = i + random.Next(count - i);
            (order[i], order[j]) = (order[j], order[i]);
        }
        return order[..options.SamplesPerLayer].Order().Select(k => (k / (tokens - 1), 1 + k % (tokens - 1))).ToArray();
    }

    /// <summary>
    /// The model's own stories: each starts at BOS and samples with temperature and top-p, story i with seed
    /// <see cref="MatchValidationOptions.Seed"/> + i, as <c>featureflow collect</c> makes its corpus.
    /// </summary>
    public static int[][] GenerateStories(HookedDecoder decoder, int bosId, MatchValidationOptions options)
    {
        var shape = decoder.SteeringShape
                    ?? throw new InvalidOperationException("stories are generated on the hooked graph");
        int rows = options.Sequences, vocab = decoder.Architecture.VocabSize;
        var samplers = Enumerable.Range(0, rows).Select(r => new Sampler(new SamplingOptions
        {
            Temperature = options.Temperature, TopP = options.TopP, Seed = options.Seed + (ulong)r,
        })).ToArray();
        var stories = Enumerable.Range(0, rows).Select(_ => new int[options.Tokens]).ToArray();
        using var state = decoder.NewState(rows);
        using var identity = decoder.Bind(Enumerable.Repeat(new SteeringTensors(shape), rows).ToArray());
        var current = Enumerable.Repeat(bosId, rows).ToArray();
        for (var t = 0; ; t++)
        {
            for (var r = 0; r < rows; r++) stories[r][t] = current[r];
            if (t + 1 == options.Tokens) return stories;
            var logits = decoder.Forward(state, current, identity);
            for (var r = 0; r < rows; r++) current[r] = samplers[r].Sample(logits.AsSpan(r * vocab, vocab));
        }
    }

    /// <summary>Stories, sampled tokens, interventions and the summary, timed.</summary>
    public static MatchValidationReport Run(HookedDecoder decoder, SaeSet saes, FlowMap map, int bosId,
        MatchValidationOptions options, Action<int, int>? progress = null)
    {
        options.Validate(decoder.Architecture.ContextLength);
        var validator = new MatchValidator(decoder, saes, map, options);
        var clock = Stopwatch.StartNew();
        var stories = GenerateStories(decoder, bosId, options);
        var storiesTime = clock.Elapsed;
        var tokens = validator.EvaluateSample(stories, progress);
        return MatchValidationReport.Create(options, decoder.Architecture.Layers, tokens, storiesTime,
            clock.Elapsed - storiesTime, decoder.Provider.Name);
    }

    private float TargetAfter(float[][] residSites, int row, LayerPlan plan)
    {
        var d = _decoder.Architecture.DModel;
        return _hooks[_residSites[plan.Layer]].Activation(plan.Target, residSites[plan.Layer].AsSpan(row * d, d));
    }

    private int[] Active(float[] activations)
    {
        var list = new List<int>();
        for (var j = 0; j < activations.Length; j++)
            if (activations[j] > _options.Epsilon) list.Add(j);
        return [.. list];
    }

    /// <summary>SplitMix64's finaliser: nearby (seed, stream) pairs get unrelated seeds.</summary>
    private static int Mix(ulong seed, ulong stream)
    {
        var z = seed + 0x9E3779B97F4A7C15UL * (stream + 1);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return (int)((z ^ (z >> 31)) & int.MaxValue);
    }

    /// <summary>One site's SAE in the steering hook's form: a(h) = JumpReLU_θ(e·h + b), b_dec folded into b.</summary>
    private sealed class HookForm
    {
        private readonly SparseAutoencoder _sae;
        private readonly (float[] Decoder, float[] Encoder, float Bias, float Threshold)[] _features;

        public HookForm(SparseAutoencoder sae)
        {
            _sae = sae;
            _features = Enumerable.Range(0, sae.DSae).Select(sae.HookFeature).ToArray();
        }

        public float Activation(int feature, ReadOnlySpan<float> h)
        {
            var f = _features[feature];
            // The hook graph's Where(Greater(pre, θ), pre, 0).
            var pre = TensorPrimitives.Dot(f.Encoder, h) + f.Bias;
            return pre > f.Threshold ? pre : 0f;
        }

        public float[] Activations(ReadOnlySpan<float> h)
        {
            var a = new float[_features.Length];
            for (var j = 0; j < a.Length; j++) a[j] = Activation(j, h);
            return a;
        }

        public (Site, int Hook, int TopK, int Both) Agreement(ReadOnlySpan<float> h, float[] hook, float epsilon)
        {
            var z = new float[_sae.DSae];
            _sae.Encode(h, z, new float[_sae.DIn]);
            int inHook = 0, inTopK = 0, both = 0;
            for (var j = 0; j < z.Length; j++)
            {
                inHook += hook[j] > epsilon ? 1 : 0;
                inTopK += z[j] > 0f ? 1 : 0;
                both += hook[j] > epsilon && z[j] > 0f ? 1 : 0;
            }
            return (_sae.Site, inHook, inTopK, both);
        }

        public SteeringTerm Term(int feature, Deactivation mode)
        {
            var (v, e, b, theta) = _features[feature];
            var ev = 0.0;
            for (var i = 0; i < e.Length; i++) ev += (double)e[i] * v[i];
            if (mode == Deactivation.Zero && !(ev > 0))
                throw new InvalidOperationException(
                    $"{_sae.Site}/{feature}: e·v = {ev:G3}, so no step along v zeroes the feature (use Remove)");
            var r = mode == Deactivation.Remove ? 0f : (float)(1 - 1 / ev);
            return new SteeringTerm(_sae.Site, SteeringOperation.Rescale, r, new FeatureVector(v, e, b, theta));
        }
    }

    /// <summary>A predecessor site of a layer's target on a token: its top-1 match, candidates, results.</summary>
    private sealed class SourcePlan(MatchSite kind, (FeatureId Feature, float Score) match, int[] candidates, int pick)
    {
        private float[]? _after;

        public MatchSite Kind { get; } = kind;
        public (FeatureId Feature, float Score) Match { get; } = match;
        /// <summary>Active features at the site, ascending (so exhaustive ties go to the lower index).</summary>
        public int[] Candidates { get; } = candidates;
        /// <summary>Index into <see cref="Candidates"/> of the random pick (−1: none is active).</summary>
        public int Pick { get; } = pick;
        public int MatchIndex { get; } = Array.IndexOf(candidates, match.Feature.Index);
        public bool MatchActive => MatchIndex >= 0;
        /// <summary>Index into <see cref="Candidates"/> of the one that lowers the target most.</summary>
        public int Best { get; private set; }
        public Site Site => Match.Feature.Site;

        /// <summary>Takes the target's activation after deactivating each candidate.</summary>
        public void Measured(IEnumerable<float> after)
        {
            _after = after.ToArray();
            Best = 0;
            for (var i = 1; i < _after.Length; i++)
                if (_after[i] < _after[Best]) Best = i;
        }

        public FeatureId Candidate(int index) => new(Site, Candidates[index]);

        /// <summary>The measured intervention on one candidate; null where the match is off (none ran).</summary>
        public Intervention? At(int index) => MatchActive ? new Intervention([Candidate(index)], _after![index]) : null;
    }

    private sealed record LayerPlan(int Layer, int Target, float Before, IReadOnlyList<SourcePlan> Sources)
    {
        /// <summary>Top-1 matches, random picks and exhaustive bests, each at all sites with an active match.</summary>
        public FeatureId[][] Choices()
        {
            var on = Sources.Where(s => s.MatchActive).ToArray();
            return [
                on.Select(s => s.Match.Feature).ToArray(),
                on.Select(s => s.Candidate(s.Pick)).ToArray(),
                on.Select(s => s.Candidate(s.Best)).ToArray(),
            ];
        }
    }
}
