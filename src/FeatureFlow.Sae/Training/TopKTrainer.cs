using System.Numerics.Tensors;
using FeatureFlow.Models;

namespace FeatureFlow.Sae.Training;

public sealed record TopKTrainingOptions
{
    /// <summary>Features (latents); 0 means 8 × d_in.</summary>
    public int DSae { get; init; }
    public int K { get; init; } = 16;
    public int Epochs { get; init; } = 4;
    public int BatchSize { get; init; } = 1024;
    public float LearningRate { get; init; } = 1e-3f;
    public ulong Seed { get; init; } = 1;
    /// <summary>A feature that has not fired for this many training tokens is dead and gets resampled.</summary>
    public int DeadAfterTokens { get; init; } = 100_000;
    /// <summary>Steps between dead-feature resampling passes (none in the last epoch, so the report is honest).</summary>
    public int ResampleEverySteps { get; init; } = 250;
    /// <summary>Share of tokens held out for the report.</summary>
    public double HeldOutFraction { get; init; } = 0.1;
    /// <summary>How the steering hook's per-feature JumpReLU thresholds are set after training.</summary>
    public ThresholdRule Thresholds { get; init; } = ThresholdRule.MaxJaccard;
    /// <summary>For <see cref="ThresholdRule.SelectedPercentile"/>: the percentile of selected activations.</summary>
    public double ThresholdPercentile { get; init; } = 0.10;
}

/// <summary>FVU, mean L0 and dead-feature share of an SAE on a set of activations.</summary>
public sealed record SaeReport(double Fvu, double MeanL0, double DeadShare, long Tokens);

/// <summary>
/// Trains TopK SAEs (Gao et al. 2024: tied initialisation, unit-norm decoder rows, b_dec initialised at
/// the data mean) with Adam on the CPU. Dead features are resampled toward the worst-reconstructed
/// inputs. Deterministic for a seed: work is split into fixed shards whose gradients are summed in a
/// fixed order, so thread scheduling never changes a bit of the result.
/// </summary>
public static class TopKTrainer
{
    private const int Shards = 2;

    public static (SparseAutoencoder Sae, SaeReport Train, SaeReport HeldOut) Train(
        float[] activations, int dIn, Site site, string modelName, TopKTrainingOptions options, Action<long, long>? progress = null)
    {
        var n = activations.Length / dIn;
        if (n * dIn != activations.Length) throw new ArgumentException($"{activations.Length} values are not whole rows of d_in = {dIn}");
        var heldOut = (int)(n * options.HeldOutFraction);
        var trainCount = n - heldOut;
        if (trainCount < options.BatchSize) throw new ArgumentException($"{trainCount} training tokens are fewer than one batch ({options.BatchSize})");
        var dSae = options.DSae > 0 ? options.DSae : 8 * dIn;
        if (options.K < 1 || options.K > dSae) throw new ArgumentException($"k = {options.K} must be in 1..{dSae}");

        // Each site gets its own stream: SAEs initialised from one shared matrix would keep feature j
        // aligned across sites and fake cross-layer matches in the flow map.
        var rng = new Random(SeedFor(options.Seed, site));
        var train = activations.AsMemory(0, trainCount * dIn);
        // Train on x / scale (mean squared norm ≈ d_in) so one learning rate suits every site; folded back below.
        var scale = (float)Math.Sqrt(MeanSquaredNorm(train.Span, dIn) / dIn);
        if (!(scale > 0f) || !float.IsFinite(scale)) throw new ArgumentException($"activations at {site} are all zero or not finite");

        var p = new Parameters(dIn, dSae);
        InitialiseDecoder(p, rng);
        Array.Copy(p.WDec, p.WEnc, p.WDec.Length);
        var mean = new float[dIn];
        for (var i = 0; i < trainCount; i++) TensorPrimitives.Add(mean, train.Span.Slice(i * dIn, dIn), mean);
        TensorPrimitives.Multiply(mean, 1f / (trainCount * scale), p.BDec);

        var adam = new Adam(p, options.LearningRate);
        var shards = Enumerable.Range(0, Shards).Select(_ => new Gradients(dIn, dSae)).ToArray();
        var lastFired = new long[dSae];
        var order = Enumerable.Range(0, trainCount).ToArray();
        var stepsPerEpoch = trainCount / options.BatchSize;
        long step = 0, tokensSeen = 0, totalSteps = (long)stepsPerEpoch * options.Epochs;
        var batch = new float[options.BatchSize * dIn];
        var errors = new float[options.BatchSize];

        for (var epoch = 0; epoch < options.Epochs; epoch++)
        {
            rng.Shuffle(order);
            for (var s = 0; s < stepsPerEpoch; s++, step++)
            {
                for (var b = 0; b < options.BatchSize; b++)
                    TensorPrimitives.Multiply(train.Span.Slice(order[s * options.BatchSize + b] * dIn, dIn), 1f / scale, batch.AsSpan(b * dIn, dIn));
                var shardSize = (options.BatchSize + Shards - 1) / Shards;
                Parallel.For(0, Shards, shard =>
                {
                    var g = shards[shard];
                    g.Clear();
                    var end = Math.Min(options.BatchSize, (shard + 1) * shardSize);
                    for (var b = shard * shardSize; b < end; b++) errors[b] = Accumulate(p, options.K, batch.AsSpan(b * dIn, dIn), g);
                });
                for (var shard = 1; shard < Shards; shard++) shards[0].Add(shards[shard]);
                tokensSeen += options.BatchSize;
                for (var shard = 0; shard < Shards; shard++)
                    foreach (var j in shards[shard].Fired) lastFired[j] = tokensSeen;
                adam.Step(shards[0], 2f / options.BatchSize);
                NormaliseDecoderRows(p);

                var lastEpoch = epoch == options.Epochs - 1;
                if (!lastEpoch && options.ResampleEverySteps > 0 && (step + 1) % options.ResampleEverySteps == 0)
                    Resample(p, adam, lastFired, tokensSeen, options.DeadAfterTokens, batch, errors, options.K);
                progress?.Invoke(step + 1, totalSteps);
            }
        }

        var sae = Fold(p, scale, site, modelName, options.K);
        var thresholdSample = activations.AsSpan(0, Math.Min(trainCount, 100_000) * dIn);
        ThresholdCalibration.Calibrate(sae, thresholdSample, options.Thresholds, options.ThresholdPercentile);
        var trainReport = Evaluate(sae, activations.AsSpan(0, Math.Min(trainCount, 100_000) * dIn));
        var heldOutReport = heldOut > 0 ? Evaluate(sae, activations.AsSpan(trainCount * dIn)) : trainReport;
        sae.Metadata["trainer"] = "featureflow TopK";
        sae.Metadata["threshold_rule"] = options.Thresholds.ToString();
        sae.Metadata["seed"] = options.Seed.ToString(System.Globalization.CultureInfo.InvariantCulture);
        sae.Metadata["training_tokens"] = ((long)trainCount * options.Epochs).ToString(System.Globalization.CultureInfo.InvariantCulture);
        sae.Metadata["held_out_fvu"] = heldOutReport.Fvu.ToString("R", System.Globalization.CultureInfo.InvariantCulture);
        sae.Metadata["held_out_mean_l0"] = heldOutReport.MeanL0.ToString("R", System.Globalization.CultureInfo.InvariantCulture);
        sae.Metadata["held_out_dead_share"] = heldOutReport.DeadShare.ToString("R", System.Globalization.CultureInfo.InvariantCulture);
        sae.Metadata["held_out_tokens"] = heldOutReport.Tokens.ToString(System.Globalization.CultureInfo.InvariantCulture);
        return (sae, trainReport, heldOutReport);
    }

    /// <summary>A per-site seed (SplitMix64 finaliser: stable across processes, unlike HashCode).</summary>
    private static int SeedFor(ulong seed, Site site)
    {
        var z = seed + (ulong)(site.Index + 1) * 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return unchecked((int)(z ^ (z >> 31)));
    }

    /// <summary>FVU = Σ‖x − x̂‖² / Σ‖x − x̄‖²; dead = features that never fire on these activations.</summary>
    public static SaeReport Evaluate(SparseAutoencoder sae, ReadOnlySpan<float> activations)
    {
        var d = sae.DIn;
        var n = activations.Length / d;
        var mean = new double[d];
        for (var i = 0; i < n; i++)
            for (var c = 0; c < d; c++) mean[c] += activations[i * d + c];
        for (var c = 0; c < d; c++) mean[c] /= n;
        var z = new float[sae.DSae];
        var xHat = new float[d];
        var scratch = new float[d];
        var fired = new bool[sae.DSae];
        double residual = 0, total = 0, l0 = 0;
        for (var i = 0; i < n; i++)
        {
            var x = activations.Slice(i * d, d);
            sae.Encode(x, z, scratch);
            sae.Decode(z, xHat);
            for (var j = 0; j < z.Length; j++)
                if (z[j] != 0f)
                {
                    fired[j] = true;
                    l0++;
                }
            for (var c = 0; c < d; c++)
            {
                double e = x[c] - xHat[c], v = x[c] - mean[c];
                residual += e * e;
                total += v * v;
            }
        }
        return new SaeReport(residual / total, l0 / n, fired.Count(f => !f) / (double)sae.DSae, n);
    }

    private sealed class Parameters(int dIn, int dSae)
    {
        public readonly int DIn = dIn, DSae = dSae;
        public readonly float[] WEnc = new float[dSae * dIn], BEnc = new float[dSae], WDec = new float[dSae * dIn], BDec = new float[dIn];
        public float[][] All => [WEnc, BEnc, WDec, BDec];
    }

    private sealed class Gradients(int dIn, int dSae)
    {
        public readonly float[] WEnc = new float[dSae * dIn], BEnc = new float[dSae], WDec = new float[dSae * dIn], BDec = new float[dIn];
        public readonly HashSet<int> Fired = [];
        public readonly float[] Pre = new float[dSae], Centered = new float[dIn], XHat = new float[dIn], GradInput = new float[dIn];
        public readonly int[] Top = new int[dSae];
        public float[][] All => [WEnc, BEnc, WDec, BDec];

        public void Clear()
        {
            foreach (var a in All) Array.Clear(a);
            Fired.Clear();
        }

        public void Add(Gradients other)
        {
            var mine = All;
            var theirs = other.All;
            for (var i = 0; i < mine.Length; i++) TensorPrimitives.Add(mine[i], theirs[i], mine[i]);
        }
    }

    /// <summary>Forward and backward for one token (loss ‖x̂ − x‖²); returns the token's squared error.</summary>
    private static float Accumulate(Parameters p, int k, ReadOnlySpan<float> x, Gradients g)
    {
        int d = p.DIn;
        TensorPrimitives.Subtract(x, p.BDec, g.Centered);
        for (var j = 0; j < p.DSae; j++) g.Pre[j] = TensorPrimitives.Dot(p.WEnc.AsSpan(j * d, d), g.Centered) + p.BEnc[j];
        var count = SparseAutoencoder.TopIndices(g.Pre, k, g.Top);
        p.BDec.CopyTo(g.XHat, 0);
        for (var i = 0; i < count; i++)
        {
            var j = g.Top[i];
            if (g.Pre[j] > 0f) TensorPrimitives.MultiplyAdd(p.WDec.AsSpan(j * d, d), g.Pre[j], g.XHat, g.XHat);
        }
        var e = g.XHat.AsSpan();
        TensorPrimitives.Subtract(e, x, e);                 // e = x̂ − x
        TensorPrimitives.Add(g.BDec, e, g.BDec);            // ∂/∂b_dec through the output
        Array.Clear(g.GradInput);
        for (var i = 0; i < count; i++)
        {
            var j = g.Top[i];
            var z = g.Pre[j];
            if (!(z > 0f)) continue;
            g.Fired.Add(j);
            var wDec = g.WDec.AsSpan(j * d, d);
            TensorPrimitives.MultiplyAdd(e, z, wDec, wDec);
            var dz = TensorPrimitives.Dot(p.WDec.AsSpan(j * d, d), e);
            var wEnc = g.WEnc.AsSpan(j * d, d);
            TensorPrimitives.MultiplyAdd(g.Centered, dz, wEnc, wEnc);
            g.BEnc[j] += dz;
            TensorPrimitives.MultiplyAdd(p.WEnc.AsSpan(j * d, d), dz, g.GradInput, g.GradInput);
        }
        TensorPrimitives.Subtract(g.BDec, g.GradInput, g.BDec); // ∂/∂b_dec through the centred input
        return TensorPrimitives.Dot(e, e);
    }

    private sealed class Adam(Parameters p, float learningRate)
    {
        private const float Beta1 = 0.9f, Beta2 = 0.999f, Epsilon = 1e-8f;
        private readonly float[][] _m = p.All.Select(a => new float[a.Length]).ToArray();
        private readonly float[][] _v = p.All.Select(a => new float[a.Length]).ToArray();
        private int _t;

        public void Step(Gradients g, float gradScale)
        {
            _t++;
            var c1 = 1f - MathF.Pow(Beta1, _t);
            var c2 = 1f - MathF.Pow(Beta2, _t);
            var parameters = p.All;
            var grads = g.All;
            for (var a = 0; a < parameters.Length; a++)
            {
                float[] w = parameters[a], gr = grads[a], m = _m[a], v = _v[a];
                for (var i = 0; i < w.Length; i++)
                {
                    var gi = gr[i] * gradScale;
                    m[i] = Beta1 * m[i] + (1f - Beta1) * gi;
                    v[i] = Beta2 * v[i] + (1f - Beta2) * gi * gi;
                    w[i] -= learningRate * (m[i] / c1) / (MathF.Sqrt(v[i] / c2) + Epsilon);
                }
            }
        }

        /// <summary>Forgets the moments of a resampled feature.</summary>
        public void Reset(int feature)
        {
            var d = p.DIn;
            foreach (var state in new[] { _m, _v })
            {
                Array.Clear(state[0], feature * d, d);
                state[1][feature] = 0f;
                Array.Clear(state[2], feature * d, d);
            }
        }
    }

    private static void InitialiseDecoder(Parameters p, Random rng)
    {
        for (var i = 0; i < p.WDec.Length; i++)
        {
            // Box–Muller: isotropic directions.
            double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
            p.WDec[i] = (float)(Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
        }
        NormaliseDecoderRows(p);
    }

    private static void NormaliseDecoderRows(Parameters p)
    {
        for (var j = 0; j < p.DSae; j++)
        {
            var row = p.WDec.AsSpan(j * p.DIn, p.DIn);
            var norm = TensorPrimitives.Norm(row);
            if (norm > 0f) TensorPrimitives.Multiply(row, 1f / norm, row);
        }
    }

    /// <summary>Points each dead feature at one of the batch's worst-reconstructed inputs.</summary>
    private static void Resample(Parameters p, Adam adam, long[] lastFired, long tokensSeen, int deadAfter, float[] batch, float[] errors, int k)
    {
        var dead = Enumerable.Range(0, p.DSae).Where(j => tokensSeen - lastFired[j] > deadAfter).ToArray();
        if (dead.Length == 0) return;
        var worst = Enumerable.Range(0, errors.Length).OrderByDescending(b => errors[b]).ThenBy(b => b).ToArray();
        var d = p.DIn;
        var g = new Gradients(d, p.DSae);
        var encNorm = Enumerable.Range(0, p.DSae).Where(j => !dead.Contains(j)).Select(j => TensorPrimitives.Norm(p.WEnc.AsSpan(j * d, d))).DefaultIfEmpty(1f).Average();
        for (var i = 0; i < dead.Length; i++)
        {
            var j = dead[i];
            var x = batch.AsSpan(worst[i % worst.Length] * d, d);
            Accumulate(p, k, x, g);  // leaves x̂ − x in g.XHat
            var row = p.WDec.AsSpan(j * d, d);
            TensorPrimitives.Negate(g.XHat, row);
            var norm = TensorPrimitives.Norm(row);
            if (!(norm > 0f)) continue;
            TensorPrimitives.Multiply(row, 1f / norm, row);
            TensorPrimitives.Multiply(row, 0.2f * encNorm, p.WEnc.AsSpan(j * d, d));
            p.BEnc[j] = 0f;
            adam.Reset(j);
            lastFired[j] = tokensSeen;
        }
    }

    /// <summary>Undoes the training-time input scaling: the SAE then reads raw activations.</summary>
    private static SparseAutoencoder Fold(Parameters p, float scale, Site site, string modelName, int k)
    {
        var sae = new SparseAutoencoder(p.DIn, p.DSae, SaeActivation.TopK, site) { K = k, ModelName = modelName };
        Array.Copy(p.WEnc, sae.Encoder, p.WEnc.Length);
        Array.Copy(p.WDec, sae.Decoder, p.WDec.Length);
        TensorPrimitives.Multiply(p.BEnc, scale, sae.EncoderBias);
        TensorPrimitives.Multiply(p.BDec, scale, sae.DecoderBias);
        return sae;
    }

    private static double MeanSquaredNorm(ReadOnlySpan<float> data, int d)
    {
        double sum = 0;
        for (var i = 0; i < data.Length; i++) sum += (double)data[i] * data[i];
        return sum / (data.Length / d);
    }
}
