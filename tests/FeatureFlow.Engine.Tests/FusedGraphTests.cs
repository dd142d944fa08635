using FeatureFlow.Models;
using FeatureFlow.Models.Export;
using FeatureFlow.Models.Folder;
using FeatureFlow.Models.Llama2c;
using FeatureFlow.Onnx;
using FeatureFlow.Onnx.CustomOps;
using FeatureFlow.Onnx.Ir;
using Microsoft.ML.OnnxRuntime;
using Xunit.Abstractions;

namespace FeatureFlow.Engine.Tests;

/// <summary>
/// The <see cref="OperatorSet.Fused"/> graphs (onnxruntime-genai model-builder style) against the plain-operator
/// graphs, run.c and the C# reference forward pass, for both KV layouts.
/// </summary>
public class FusedGraphTests(FusedGraphFixture f, ITestOutputHelper output) : IClassFixture<FusedGraphFixture>
{
    private static readonly int[] Prompt = [1, 403, 407, 261, 378]; // BOS "Once upon a time"
    private const int Capacity = 64;
    private const double Tolerance = 1e-4;
    private int Vocab => f.Arch.VocabSize;

    [Fact]
    public void Fused_concat_graph_matches_the_plain_graph_over_prefill_and_20_decode_steps()
    {
        using var fusedState = f.FusedConcat.NewState();
        using var plainState = f.PlainConcat.NewState();
        int[] tokens = Prompt;
        var worst = 0.0;
        for (var step = 0; step <= 20; step++)
        {
            var fused = f.FusedConcat.Forward(fusedState, tokens, null);
            var plain = f.PlainConcat.Forward(plainState, tokens, null);
            for (var r = 0; r < tokens.Length; r++)
            {
                var rel = Numerics.RelativeL2(fused.AsSpan(r * Vocab, Vocab), plain.AsSpan(r * Vocab, Vocab));
                Assert.True(rel <= Tolerance, $"step {step}, token {r}: relative L2 {rel:E2}");
                worst = Math.Max(worst, rel);
            }
            tokens = [ArgMaxAt(plain, tokens.Length - 1)];
            Assert.Equal(tokens[0], ArgMaxAt(fused, fused.Length / Vocab - 1));
        }
        output.WriteLine($"fused vs plain Concat graph: max relative L2 {worst:E2}");
    }

    /// <summary>
    /// The Concat layout's batches: a short prompt left-padded beside a longer one (attention_mask 0 on the padding,
    /// positions counting real tokens only), prefill and 6 decode steps; every real position, fused vs plain. This is
    /// where MultiHeadAttention's attention_bias must carry the padding mask per row.
    /// </summary>
    [Fact]
    public void Fused_concat_graph_matches_the_plain_graph_for_a_left_padded_batch()
    {
        int[][] prompts = [Prompt, [1, 300, 301]];
        var fusedCache = new Dictionary<string, OrtValue>();
        var plainCache = new Dictionary<string, OrtValue>();
        int t = prompts.Max(p => p.Length), rows = prompts.Length;
        var mask = prompts
            .Select(p => Enumerable.Repeat(0L, t - p.Length).Concat(Enumerable.Repeat(1L, p.Length)).ToList())
            .ToArray();
        var ids = prompts.SelectMany(p => Enumerable.Repeat(0L, t - p.Length).Concat(p.Select(x => (long)x))).ToArray();
        var positions = mask.SelectMany(m => m.Select((_, i) => Math.Max(0L, m.Take(i + 1).Sum() - 1))).ToArray();
        var worst = 0.0;
        try
        {
            for (var step = 0; step <= 6; step++)
            {
                var fused = ForwardBatch(f.FusedConcatSession, fusedCache, ids, positions, mask);
                var plain = ForwardBatch(f.PlainConcatSession, plainCache, ids, positions, mask);
                var width = ids.Length / rows;
                for (var r = 0; r < rows; r++)
                    for (var i = 0; i < width; i++)
                    {
                        if (mask[r][mask[r].Count - width + i] == 0) continue;
                        var at = (r * width + i) * Vocab;
                        var rel = Numerics.RelativeL2(fused.AsSpan(at, Vocab), plain.AsSpan(at, Vocab));
                        Assert.True(rel <= Tolerance, $"step {step}, row {r}, token {i}: relative L2 {rel:E2}");
                        worst = Math.Max(worst, rel);
                    }
                var next = Enumerable.Range(0, rows).Select(r => (long)ArgMaxAt(plain, r * width + width - 1)).ToArray();
                positions = Enumerable.Range(0, rows).Select(r => mask[r].Sum()).ToArray();
                foreach (var m in mask) m.Add(1);
                ids = next;
            }
        }
        finally
        {
            foreach (var v in fusedCache.Values.Concat(plainCache.Values)) v.Dispose();
        }
        output.WriteLine($"fused vs plain Concat graph, left-padded batch of 2: max relative L2 {worst:E2}");
    }

    /// <summary>
    /// One run of a Concat graph for a batch: ids and positions [rows, T], each row's attention mask over all its
    /// tokens so far; <paramref name="cache"/> holds the presents by past name (empty at the start) and is advanced.
    /// </summary>
    private float[] ForwardBatch(InferenceSession session, Dictionary<string, OrtValue> cache, long[] ids,
        long[] positions, List<long>[] mask)
    {
        int rows = mask.Length, t = ids.Length / rows, total = mask[0].Count;
        using var idsValue = OrtValue.CreateTensorValueFromMemory(ids, [rows, t]);
        using var positionsValue = OrtValue.CreateTensorValueFromMemory(positions, [rows, t]);
        using var maskValue = OrtValue.CreateTensorValueFromMemory(mask.SelectMany(m => m).ToArray(), [rows, total]);
        var inputs = new Dictionary<string, OrtValue>
        {
            [GraphNames.InputIds] = idsValue,
            [GraphNames.PositionIds] = positionsValue,
            [GraphNames.AttentionMask] = maskValue,
        };
        var empty = new List<OrtValue>();
        for (var l = 0; l < f.Arch.Layers; l++)
            foreach (var name in new[] { GraphNames.PastKey(l), GraphNames.PastValue(l) })
            {
                if (!cache.TryGetValue(name, out var past))
                {
                    long[] none = [rows, f.Arch.KvHeads, 0, f.Arch.HeadSize];
                    past = OrtValue.CreateTensorValueFromMemory(Array.Empty<float>(), none);
                    empty.Add(past);
                }
                inputs[name] = past;
            }
        string[] outputs = [GraphNames.Logits, .. Enumerable.Range(0, f.Arch.Layers)
            .SelectMany(l => new[] { GraphNames.PresentKey(l), GraphNames.PresentValue(l) })];
        using var runOptions = new RunOptions();
        var results = session.Run(runOptions, inputs.Keys.ToArray(), inputs.Values.ToArray(), outputs);
        foreach (var v in cache.Values.Concat(empty)) v.Dispose();
        for (var l = 0; l < f.Arch.Layers; l++)
        {
            cache[GraphNames.PastKey(l)] = results[1 + 2 * l];
            cache[GraphNames.PastValue(l)] = results[2 + 2 * l];
        }
        using var logits = results[0];
        return logits.GetTensorDataAsSpan<float>().ToArray();
    }

    /// <summary>
    /// Three fresh prompts of different lengths prefilled together (right-padded), a fourth alone into its slot,
    /// then 12 decode steps of all four rows with their own lengths: each row's logits, fused vs plain.
    /// </summary>
    [Fact]
    public void Fused_shared_buffer_graph_matches_the_plain_graph_for_rows_of_different_lengths()
    {
        int[][] prompts = [Prompt, [1, 403], [1, 261, 378, 403, 407, 261, 378, 100, 200], [1, 300, 301]];
        var fusedKv = new SharedKvBuffer(f.Arch, prompts.Length, Capacity, float.NaN);
        var plainKv = new SharedKvBuffer(f.Arch, prompts.Length, Capacity, float.NaN);
        var worst = 0.0;
        // Compares the rows' real positions (padding positions' logits are meaningless in both graphs).
        float[] Both(int firstSlot, BatchRow[] rows, string what)
        {
            var fused = f.FusedShared.Run(fusedKv, firstSlot, rows);
            var plain = f.PlainShared.Run(plainKv, firstSlot, rows);
            var t = rows.Max(r => r.Tokens.Length);
            for (var r = 0; r < rows.Length; r++)
                for (var i = 0; i < rows[r].Tokens.Length; i++)
                {
                    var at = (r * t + i) * Vocab;
                    var rel = Numerics.RelativeL2(fused.AsSpan(at, Vocab), plain.AsSpan(at, Vocab));
                    Assert.True(rel <= Tolerance, $"{what}, row {r}, token {i}: relative L2 {rel:E2}");
                    worst = Math.Max(worst, rel);
                }
            return plain;
        }
        var first = prompts[..3];
        var t = first.Max(p => p.Length);
        var prefill = Both(0, first.Select(p => new BatchRow(p, 0, null)).ToArray(), "batched prefill");
        var next = first.Select((p, r) => ArgMaxAt(prefill, r * t + p.Length - 1)).ToList();
        var last = prompts[3];
        next.Add(ArgMaxAt(Both(3, [new BatchRow(last, 0, null)], "single prefill"), last.Length - 1));
        for (var step = 0; step < 12; step++)
        {
            var rows = prompts.Select((p, r) => new BatchRow([next[r]], p.Length + step, null)).ToArray();
            var logits = Both(0, rows, $"decode step {step}");
            for (var r = 0; r < rows.Length; r++) next[r] = ArgMaxAt(logits, r);
        }
        output.WriteLine($"fused vs plain SharedBuffer graph, 4 rows: max relative L2 {worst:E2}");
    }

    public static TheoryData<string, KvCacheLayout> RunCCases()
    {
        var data = new TheoryData<string, KvCacheLayout>();
        foreach (var c in RunCReference.Cases)
            foreach (var layout in Enum.GetValues<KvCacheLayout>()) data.Add(c.Name, layout);
        return data;
    }

    [Theory]
    [MemberData(nameof(RunCCases))]
    public void Greedy_decoding_through_the_fused_graph_reproduces_run_c_token_for_token(string name,
        KvCacheLayout layout)
    {
        var c = RunCReference.Case(name);
        var ids = layout == KvCacheLayout.Concat ? GreedyConcat(c) : GreedyShared(c);
        Assert.Equal(c.SampledIds, ids);
    }

    private List<int> GreedyConcat(RunCCase c)
    {
        using var state = f.FusedConcat.NewState();
        var logits = f.FusedConcat.Forward(state, c.PromptIds, null);
        var ids = new List<int> { ArgMaxAt(logits, c.PromptIds.Length - 1) };
        while (ids.Count < c.SampledIds.Length) ids.Add(Numerics.ArgMax(f.FusedConcat.Forward(state, [ids[^1]], null)));
        return ids;
    }

    private List<int> GreedyShared(RunCCase c)
    {
        var kv = new SharedKvBuffer(f.Arch, 1, f.Arch.ContextLength);
        var logits = f.FusedShared.Run(kv, 0, [new BatchRow(c.PromptIds, 0, null)]);
        var ids = new List<int> { ArgMaxAt(logits, c.PromptIds.Length - 1) };
        while (ids.Count < c.SampledIds.Length)
        {
            var past = c.PromptIds.Length + ids.Count - 1;
            ids.Add(Numerics.ArgMax(f.FusedShared.Run(kv, 0, [new BatchRow([ids[^1]], past, null)])));
        }
        return ids;
    }

    [Theory]
    [InlineData(KvCacheLayout.Concat, "MultiHeadAttention")]
    [InlineData(KvCacheLayout.SharedBuffer, "GroupQueryAttention")]
    public void Fused_graph_holds_the_fused_operators_and_none_of_the_plain_rms_norm(KvCacheLayout layout,
        string attention)
    {
        var counts = OperatorCounts(f.Model(layout, OperatorSet.Fused));
        int layers = f.Arch.Layers;
        output.WriteLine(string.Join(", ", counts.OrderBy(c => c.Key).Select(c => $"{c.Key} {c.Value}")));
        Assert.Equal(1, counts.GetValueOrDefault(":SimplifiedLayerNormalization"));
        Assert.Equal(2 * layers, counts.GetValueOrDefault("com.microsoft:SkipSimplifiedLayerNormalization"));
        Assert.Equal(layers, counts.GetValueOrDefault($"com.microsoft:{attention}"));
        // stories260K's head size 8 is below GroupQueryAttention's rotary minimum, so q and k are rotated before it.
        Assert.Equal(2 * layers, counts.GetValueOrDefault("com.microsoft:RotaryEmbedding"));
        // Packed Q/K/V, output projection, gate, up, down per layer, and the classifier.
        Assert.Equal(5 * layers + 1, counts.GetValueOrDefault(":MatMul"));
        // The residual additions live in the skip norms; the plain RMSNorm's pieces and rotation are gone.
        foreach (var plainOp in new[] { ":ReduceMean", ":Sqrt", ":Reciprocal", ":Add", ":Cos", ":Sin", ":Concat" })
            Assert.False(counts.ContainsKey(plainOp), $"the fused graph still has {plainOp}");

        var plain = OperatorCounts(f.Model(layout, OperatorSet.Plain));
        Assert.Equal(2 * layers + 1, plain.GetValueOrDefault(":ReduceMean"));
        Assert.DoesNotContain(plain.Keys, op => op.Contains("LayerNormalization", StringComparison.Ordinal));
    }

    /// <summary>
    /// The fused graph with hooks: all-zero steering gives the hook-free fused graph's logits bit for bit (resid_post's
    /// increment enters the next norm as +0), so the engine may switch between the two per step; steered, it equals the
    /// plain-operator hooked graph (our reference) at every site kind, site outputs included.
    /// </summary>
    [Fact]
    public void Hooked_fused_graph_is_bit_identical_unsteered_and_equals_the_plain_hooked_graph_steered()
    {
        var arch = f.Arch;
        var cpu = new EngineOptions { ExecutionProvider = ExecutionProviderPreference.Cpu };
        var dir = Directory.CreateTempSubdirectory("featureflow-fused-hooked-").FullName;
        try
        {
            string Write(string name, HookedGraphOptions options)
            {
                var path = Path.Combine(dir, name);
                OnnxModelFile.Write(LlamaGraphExporter.Export(arch, f.Checkpoint.Weights, options, "stories260k"), path);
                return path;
            }
            var hookedOptions = new HookedGraphOptions { KvLayout = KvCacheLayout.Concat };
            using var fusedHooked = new HookedDecoder(Write("fused_hooked.onnx",
                hookedOptions with { Operators = OperatorSet.Fused }), arch, cpu);
            using var fusedPlain = new HookedDecoder(Write("fused.onnx",
                FusedGraphFixture.Options(KvCacheLayout.Concat, OperatorSet.Fused)), arch, cpu);
            using var plainHooked = new HookedDecoder(Write("plain_hooked.onnx", hookedOptions), arch, cpu);

            var shape = fusedHooked.SteeringShape!;
            using var zero = fusedHooked.Bind(new Steering.SteeringTensors(shape));
            using (var hookedState = fusedHooked.NewState())
            using (var plainState = fusedPlain.NewState())
            {
                int[] tokens = Prompt;
                for (var step = 0; step < 8; step++)
                {
                    var hooked = fusedHooked.Forward(hookedState, tokens, zero);
                    var plain = fusedPlain.Forward(plainState, tokens, null);
                    Assert.Equal(plain.Select(BitConverter.SingleToInt32Bits), hooked.Select(BitConverter.SingleToInt32Bits));
                    tokens = [ArgMaxAt(plain, tokens.Length - 1)];
                }
            }

            foreach (var kind in Enum.GetValues<SiteKind>())
            {
                var site = new Site(2, kind);
                var steering = new Steering.SteeringTensors(shape);
                var rng = new Random(7 + (int)kind);
                Numerics.RandomVector(rng, arch.DModel, 1f).CopyTo(steering.AddAt(site));
                steering.SetEncoderRow(site, 0, Numerics.RandomVector(rng, arch.DModel, 0.3f));
                Numerics.RandomVector(rng, arch.DModel, 0.5f).CopyTo(steering.DecoderAt(site, 0));
                steering.Coefficient(site, GraphNames.CoefficientRow.Alpha, 0) = 2f;
                steering.Coefficient(site, GraphNames.CoefficientRow.Beta, 0) = -0.3f;
                using var bound = fusedHooked.Bind(steering);
                using var boundPlain = plainHooked.Bind(steering);
                using var fusedState = fusedHooked.NewState();
                using var plainState = plainHooked.NewState();
                using var zeroState = fusedHooked.NewState();
                Site[] readout = [site, new Site(4, SiteKind.ResidPost)];
                foreach (var tokens in new[] { Prompt, [300] })
                {
                    var fused = fusedHooked.Run(fusedState, tokens, bound, readout);
                    var reference = plainHooked.Run(plainState, tokens, boundPlain, readout);
                    var unsteered = fusedHooked.Forward(zeroState, tokens, zero);
                    Assert.True(Numerics.RelativeL2(fused.Logits, unsteered) > 1e-3, $"{site}: steering changed nothing");
                    Assert.True(Numerics.RelativeL2(fused.Logits, reference.Logits) <= Tolerance,
                        $"{site}: fused vs plain hooked logits");
                    for (var i = 0; i < readout.Length; i++)
                        Assert.True(Numerics.RelativeL2(fused.Sites[i], reference.Sites[i]) <= Tolerance,
                            $"{site}: read-out of {readout[i]}");
                }
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>
    /// The batched graph's two hook forms, fused and SharedBuffer both: the custom operators (per block one
    /// ai.featureflow.SteeringHookNorm node and one SteeringHookPairNorm node) against the eleven ONNX operators per
    /// hook, for the heaviest steering (every site: add and all eight slots, each row its own): three fresh rows of different
    /// lengths prefilled together, a fourth alone into its slot, then 10 decode steps of all four at their own
    /// lengths; and one row alone (B = 1). Same logits and same values at every site output within 1e-4 relative L2
    /// at every real position, same greedy tokens, and the steering does change them.
    /// </summary>
    [Fact]
    public void Custom_operator_hooks_equal_the_onnx_operator_hooks_for_heavy_steering_at_every_site()
    {
        var options = new HookedGraphOptions { KvLayout = KvCacheLayout.SharedBuffer, Operators = OperatorSet.Fused };
        using var onnxHooks = new SharedKvDriver(FusedGraphFixture.Open(
            LlamaGraphExporter.Export(f.Arch, f.Checkpoint.Weights, options, "stories260k")), f.Arch);
        using var customHooks = new SharedKvDriver(FusedGraphFixture.Open(LlamaGraphExporter.Export(f.Arch,
            f.Checkpoint.Weights, options with { HookOperators = HookOperators.CustomOperator }, "stories260k")), f.Arch);
        int[][] prompts = [Prompt, [1, 403], [1, 261, 378, 403, 407, 261, 378, 100, 200], [1, 300, 301]];
        var steering = prompts.Select((_, r) => HeavySteering(new Random(40 + r))).ToArray();
        var onnxKv = new SharedKvBuffer(f.Arch, prompts.Length, Capacity, float.NaN);
        var customKv = new SharedKvBuffer(f.Arch, prompts.Length, Capacity, float.NaN);
        var unsteeredKv = new SharedKvBuffer(f.Arch, prompts.Length, Capacity, float.NaN);
        double worst = 0, worstSite = 0, effect = double.MaxValue;
        var sites = Site.All(f.Arch.Layers).ToArray();
        int d = f.Arch.DModel;
        // Each row's real positions: custom vs ONNX-operator hooks, and how far steering moved them.
        float[] Both(int firstSlot, BatchRow[] rows, string what)
        {
            var (reference, referenceSites) = onnxHooks.Run(onnxKv, firstSlot, rows, sites);
            var (custom, customSites) = customHooks.Run(customKv, firstSlot, rows, sites);
            var unsteered = f.FusedShared.Run(unsteeredKv, firstSlot, rows);
            var t = rows.Max(r => r.Tokens.Length);
            for (var r = 0; r < rows.Length; r++)
                for (var i = 0; i < rows[r].Tokens.Length; i++)
                {
                    var at = (r * t + i) * Vocab;
                    var rel = Numerics.RelativeL2(custom.AsSpan(at, Vocab), reference.AsSpan(at, Vocab));
                    Assert.True(rel <= Tolerance, $"{what}, row {r}, token {i}: relative L2 {rel:E2}");
                    Assert.Equal(ArgMaxAt(reference, r * t + i), ArgMaxAt(custom, r * t + i));
                    worst = Math.Max(worst, rel);
                    effect = Math.Min(effect,
                        Numerics.RelativeL2(reference.AsSpan(at, Vocab), unsteered.AsSpan(at, Vocab)));
                    for (var s = 0; s < sites.Length; s++)
                    {
                        var value = (r * t + i) * d;
                        var siteRel = Numerics.RelativeL2(customSites[s].AsSpan(value, d),
                            referenceSites[s].AsSpan(value, d));
                        Assert.True(siteRel <= Tolerance, $"{what}, row {r}, token {i}, {sites[s]}: {siteRel:E2}");
                        worstSite = Math.Max(worstSite, siteRel);
                    }
                }
            return reference;
        }
        var first = prompts[..3];
        var t = first.Max(p => p.Length);
        var prefill = Both(0, first.Select((p, r) => new BatchRow(p, 0, steering[r])).ToArray(), "batched prefill");
        var next = first.Select((p, r) => ArgMaxAt(prefill, r * t + p.Length - 1)).ToList();
        var last = prompts[3];
        next.Add(ArgMaxAt(Both(3, [new BatchRow(last, 0, steering[3])], "single prefill"), last.Length - 1));
        for (var step = 0; step < 10; step++)
        {
            var rows = prompts.Select((p, r) => new BatchRow([next[r]], p.Length + step, steering[r])).ToArray();
            var logits = Both(0, rows, $"decode step {step}");
            for (var r = 0; r < rows.Length; r++) next[r] = ArgMaxAt(logits, r);
        }
        Assert.True(effect > 1e-2, $"steering moved some position's logits by only {effect:E2}");
        output.WriteLine($"custom vs ONNX-operator hooks, heavy steering: max relative L2 {worst:E2} (logits), "
            + $"{worstSite:E2} (site outputs); steered vs unsteered: at least {effect:E2}");
    }

    /// <summary>
    /// With all-zero steering the custom-operator hooks are h + 0 + 0 and the increments +0, so the batched graph
    /// gives the hook-free graph's logits bit for bit (the engine switches between the two per step): rows of
    /// different lengths, prefill and 8 decode steps.
    /// </summary>
    [Fact]
    public void Custom_operator_hooks_with_zero_steering_are_bit_identical_to_the_graph_without_hooks()
    {
        var options = new HookedGraphOptions
        {
            KvLayout = KvCacheLayout.SharedBuffer, Operators = OperatorSet.Fused,
            HookOperators = HookOperators.CustomOperator,
        };
        using var customHooks = new SharedKvDriver(FusedGraphFixture.Open(
            LlamaGraphExporter.Export(f.Arch, f.Checkpoint.Weights, options, "stories260k")), f.Arch);
        var zero = new Steering.SteeringTensors(new Steering.SteeringShape(f.Arch.Layers, f.Arch.DModel,
            options.SlotsPerSite));
        int[][] prompts = [Prompt, [1, 403], [1, 261, 378, 403, 407, 261, 378, 100, 200]];
        var hookedKv = new SharedKvBuffer(f.Arch, prompts.Length, Capacity, float.NaN);
        var plainKv = new SharedKvBuffer(f.Arch, prompts.Length, Capacity, float.NaN);
        var rows = prompts.Select(p => new BatchRow(p, 0, zero)).ToArray();
        for (var step = 0; step <= 8; step++)
        {
            var hooked = customHooks.Run(hookedKv, 0, rows);
            var plain = f.FusedShared.Run(plainKv, 0, rows);
            Assert.Equal(plain.Select(BitConverter.SingleToInt32Bits), hooked.Select(BitConverter.SingleToInt32Bits));
            var width = rows.Max(row => row.Tokens.Length);
            rows = rows.Select((row, r) => new BatchRow(
                [ArgMaxAt(plain, r * width + row.Tokens.Length - 1)], row.Past + row.Tokens.Length, zero)).ToArray();
        }
    }

    /// <summary>
    /// Steering for fewer rows than the batch runs (a caller's bug): ONNX Runtime does not hold the symbolic batch
    /// dimension to one size across inputs, so the SteeringHook kernel must refuse it, with a message naming both
    /// shapes, rather than read past the end of the steering tensors.
    /// </summary>
    [Fact]
    public void Steering_for_fewer_rows_than_the_batch_is_refused_with_a_clear_error()
    {
        var options = new HookedGraphOptions
        {
            KvLayout = KvCacheLayout.SharedBuffer, Operators = OperatorSet.Fused,
            HookOperators = HookOperators.CustomOperator,
        };
        using var session = FusedGraphFixture.Open(
            LlamaGraphExporter.Export(f.Arch, f.Checkpoint.Weights, options, "stories260k"));
        var shape = new Steering.SteeringShape(f.Arch.Layers, f.Arch.DModel, options.SlotsPerSite);
        var kv = new SharedKvBuffer(f.Arch, 2, Capacity);
        using var values = new OrtRunValues();
        var inputs = new Dictionary<string, OrtValue>
        {
            [GraphNames.InputIds] = values.Over(new long[] { 1, 1 }, 2, 1),
            [GraphNames.PositionIds] = values.Over(new long[] { 0, 0 }, 2, 1),
            [GraphNames.SeqlensK] = values.Over(new[] { 0, 0 }, 2),
            [GraphNames.TotalSequenceLength] = values.Over(new[] { 1 }),
        };
        for (var l = 0; l < f.Arch.Layers; l++)
        {
            inputs[GraphNames.PastKey(l)] = values.Over(kv.Keys[l], 2, f.Arch.KvHeads, Capacity, f.Arch.HeadSize);
            inputs[GraphNames.PastValue(l)] = values.Over(kv.Values[l], 2, f.Arch.KvHeads, Capacity, f.Arch.HeadSize);
        }
        foreach (var (name, value) in values.Steering([null], shape)) inputs[name] = value;
        using var runOptions = new RunOptions();

        var e = Assert.Throws<OnnxRuntimeException>(() =>
            session.Run(runOptions, inputs.Keys.ToArray(), inputs.Values.ToArray(), [GraphNames.Logits]));

        Assert.Contains($"steering.add must be [batch 2, sites, d {f.Arch.DModel}]", e.Message);
        Assert.Contains($"found [1, {shape.Sites}, {f.Arch.DModel}]", e.Message);
    }

    /// <summary>The heaviest steering (<see cref="Testing.HeavySteering"/>) for stories260K with 8 slots per site.
    /// </summary>
    private Steering.SteeringTensors HeavySteering(Random rng) =>
        Testing.HeavySteering.Random(new Steering.SteeringShape(f.Arch.Layers, f.Arch.DModel, 8), rng);

    /// <summary>
    /// A random Llama with head size 16, where GroupQueryAttention rotates q and k itself (do_rotary, no
    /// RotaryEmbedding nodes) and MultiHeadAttention folds 2 query heads per KV head: both fused graphs against the
    /// C# reference forward pass. SharedBuffer: two rows prefilled into their own slots, then decoding together at
    /// different positions, so GQA's rotary must take each row's position from its own seqlens_k.
    /// </summary>
    [Fact]
    public void Fused_graphs_of_a_head_size_16_model_match_the_reference_forward_pass()
    {
        var arch = new ModelArchitecture
        {
            Family = "synthetic", DModel = 64, HiddenDim = 96, Layers = 2, Heads = 4, KvHeads = 2, VocabSize = 96,
            ContextLength = 64,
        };
        var checkpoint = new LoadedCheckpoint(arch, RandomWeights(arch, new Random(5)), "random", "");
        ModelProto Fused(KvCacheLayout layout) => LlamaGraphExporter.Export(arch, checkpoint.Weights,
            FusedGraphFixture.Options(layout, OperatorSet.Fused), "synthetic");
        var sharedModel = Fused(KvCacheLayout.SharedBuffer);
        var counts = OperatorCounts(sharedModel);
        Assert.False(counts.ContainsKey("com.microsoft:RotaryEmbedding"), "GQA should rotate q and k itself");
        Assert.All(sharedModel.Graph.Node.Where(n => n.OpType == "GroupQueryAttention"),
            n => Assert.Equal(1, n.Attribute.Single(a => a.Name == "do_rotary").I));
        using var shared = new SharedKvDriver(FusedGraphFixture.Open(sharedModel), arch);
        using var concat = new ConcatDriver(FusedGraphFixture.Open(Fused(KvCacheLayout.Concat)), arch);

        int[][] prompts = [[1, 17, 42, 5, 60], [1, 80]];
        var references = prompts.Select(_ => new ReferenceTransformer(checkpoint)).ToArray();
        var kv = new SharedKvBuffer(arch, prompts.Length, Capacity, float.NaN);
        using var concatState = concat.NewState();
        var worst = 0.0;
        void Check(ReadOnlySpan<float> actual, float[] expected, string what)
        {
            var rel = Numerics.RelativeL2(actual, expected);
            Assert.True(rel <= Tolerance, $"{what}: relative L2 {rel:E2}");
            worst = Math.Max(worst, rel);
        }
        var next = new int[prompts.Length];
        for (var r = 0; r < prompts.Length; r++)
        {
            var graph = shared.Run(kv, r, [new BatchRow(prompts[r], 0, null)]);
            var concatLogits = r == 0 ? concat.Forward(concatState, prompts[r], null) : null;
            for (var pos = 0; pos < prompts[r].Length; pos++)
            {
                var expected = references[r].Forward(prompts[r][pos], pos);
                Check(graph.AsSpan(pos * arch.VocabSize, arch.VocabSize), expected, $"SharedBuffer prefill {r}@{pos}");
                if (concatLogits is not null)
                    Check(concatLogits.AsSpan(pos * arch.VocabSize, arch.VocabSize), expected, $"Concat prefill @{pos}");
                next[r] = Numerics.ArgMax(expected);
            }
        }
        for (var step = 0; step < 10; step++)
        {
            var rows = prompts.Select((p, r) => new BatchRow([next[r]], p.Length + step, null)).ToArray();
            var graph = shared.Run(kv, 0, rows);
            var concatLogits = concat.Forward(concatState, [next[0]], null);
            for (var r = 0; r < rows.Length; r++)
            {
                var expected = references[r].Forward(next[r], rows[r].Past);
                Check(graph.AsSpan(r * arch.VocabSize, arch.VocabSize), expected, $"SharedBuffer step {step} row {r}");
                if (r == 0) Check(concatLogits, expected, $"Concat step {step}");
                next[r] = Numerics.ArgMax(expected);
            }
        }
        output.WriteLine($"head size 16: fused graphs vs the reference forward pass, max relative L2 {worst:E2}");
    }

    /// <summary>Weights of a trained model's scale: matrices uniform in ±1/√fan-in, norm weights near 1.</summary>
    private static LlamaWeights RandomWeights(ModelArchitecture a, Random rng)
    {
        float[] Matrix(int rows, int cols) => Numerics.RandomVector(rng, rows * cols, 1f / MathF.Sqrt(cols));
        float[] Norm() => Numerics.RandomVector(rng, a.DModel, 0.2f).Select(v => 1f + v).ToArray();
        float[][] PerLayer(Func<float[]> make) => Enumerable.Range(0, a.Layers).Select(_ => make()).ToArray();
        var embedding = Numerics.RandomVector(rng, a.VocabSize * a.DModel);
        return new LlamaWeights
        {
            TokenEmbedding = embedding,
            RmsAttention = PerLayer(Norm),
            Wq = PerLayer(() => Matrix(a.DModel, a.DModel)),
            Wk = PerLayer(() => Matrix(a.KvDim, a.DModel)),
            Wv = PerLayer(() => Matrix(a.KvDim, a.DModel)),
            Wo = PerLayer(() => Matrix(a.DModel, a.DModel)),
            RmsFfn = PerLayer(Norm),
            W1 = PerLayer(() => Matrix(a.HiddenDim, a.DModel)),
            W2 = PerLayer(() => Matrix(a.DModel, a.HiddenDim)),
            W3 = PerLayer(() => Matrix(a.HiddenDim, a.DModel)),
            RmsFinal = Norm(),
            Classifier = embedding,
        };
    }

    private static Dictionary<string, int> OperatorCounts(ModelProto model) =>
        model.Graph.Node.GroupBy(n => $"{n.Domain}:{n.OpType}").ToDictionary(n => n.Key, n => n.Count());

    private int ArgMaxAt(float[] logits, int row) => Numerics.ArgMax(logits.AsSpan(row * Vocab, Vocab));
}

/// <summary>stories260K exported in memory four ways: {plain, fused} × {Concat, SharedBuffer}, without hooks.</summary>
public sealed class FusedGraphFixture : IDisposable
{
    private readonly Dictionary<(KvCacheLayout, OperatorSet), ModelProto> _models = [];

    public FusedGraphFixture()
    {
        var folder = ModelFolder.Open(RepoPaths.Stories260kModel);
        Arch = folder.Manifest.Architecture;
        Checkpoint = Llama2cCheckpoint.Read(Path.Combine(folder.Directory, folder.Manifest.Provenance.Checkpoint.File));
        foreach (var layout in Enum.GetValues<KvCacheLayout>())
            foreach (var operators in Enum.GetValues<OperatorSet>())
                _models[(layout, operators)] =
                    LlamaGraphExporter.Export(Arch, Checkpoint.Weights, Options(layout, operators), "stories260k");
        PlainConcatSession = Open(Model(KvCacheLayout.Concat, OperatorSet.Plain));
        FusedConcatSession = Open(Model(KvCacheLayout.Concat, OperatorSet.Fused));
        PlainConcat = new ConcatDriver(PlainConcatSession, Arch);
        FusedConcat = new ConcatDriver(FusedConcatSession, Arch);
        PlainShared = new SharedKvDriver(Open(Model(KvCacheLayout.SharedBuffer, OperatorSet.Plain)), Arch);
        FusedShared = new SharedKvDriver(Open(Model(KvCacheLayout.SharedBuffer, OperatorSet.Fused)), Arch);
    }

    public ModelArchitecture Arch { get; }
    public LoadedCheckpoint Checkpoint { get; }
    /// <summary>The Concat graphs' sessions, owned by <see cref="PlainConcat"/> and <see cref="FusedConcat"/>.</summary>
    public InferenceSession PlainConcatSession { get; }
    public InferenceSession FusedConcatSession { get; }
    internal ConcatDriver PlainConcat { get; }
    internal ConcatDriver FusedConcat { get; }
    internal SharedKvDriver PlainShared { get; }
    internal SharedKvDriver FusedShared { get; }

    public ModelProto Model(KvCacheLayout layout, OperatorSet operators) => _models[(layout, operators)];

    /// <summary>A graph without hooks.</summary>
    public static HookedGraphOptions Options(KvCacheLayout layout, OperatorSet operators) =>
        new() { Hooks = false, SiteOutputs = false, KvLayout = layout, Operators = operators };

    public static InferenceSession Open(ModelProto model)
    {
        using var options = new SessionOptions { GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL };
        FeatureFlowOps.Register(options);
        return new InferenceSession(OnnxModelFile.Serialize(model), options);
    }

    public void Dispose()
    {
        PlainConcat.Dispose();
        FusedConcat.Dispose();
        PlainShared.Dispose();
        FusedShared.Dispose();
    }
}
