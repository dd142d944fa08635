using FeatureFlow.Models;
using FeatureFlow.Models.Export;
using FeatureFlow.Models.Folder;
using FeatureFlow.Models.Llama2c;
using FeatureFlow.Onnx.CustomOps;
using FeatureFlow.Steering;
using Microsoft.ML.OnnxRuntime;
using Xunit.Abstractions;

namespace FeatureFlow.Engine.Tests;

/// <summary>
/// decoder_hooked_batched.onnx (com.microsoft.GroupQueryAttention over one shared KV buffer per layer) against the
/// Concat graphs, the C# reference forward pass and run.c, and its batch invariance. What these tests pin down about
/// ONNX Runtime 1.31's CPU GroupQueryAttention:
/// (a) binding one OrtValue (over a pinned float[]) as past_key_values.L.* and present.L.* makes GQA write the new
///     K/V in place at positions seqlens_k − T + 1 … seqlens_k and touch nothing else;
/// (b) it never reads a slot beyond seqlens_k: a buffer full of NaN from an earlier occupant changes nothing;
/// (c) rows of different lengths decoding together are bit-identical to each row alone (same capacity), and so is a
///     right-padded prefill of fresh prompts;
/// (d) T &gt; 1 after a past ("chunked prefill") works for batch 1 only, bit-identical to one prefill; with batch &gt; 1
///     ORT refuses it. GQA calls a run a first prompt when T == total_sequence_length and then ignores every row's
///     past, so a batched run with T &gt; 1 must hold only rows with past 0.
/// </summary>
public class BatchedGraphTests(BatchedGraphFixture f, ITestOutputHelper output) : IClassFixture<BatchedGraphFixture>
{
    private static readonly int[] Prompt = [1, 403, 407, 261, 378]; // BOS "Once upon a time"
    private const int Capacity = 64;
    private int Vocab => f.Arch.VocabSize;

    private SteeringTensors Identity() => new(f.Shape);

    private SteeringTensors Steering(string intervention) =>
        new SteeringCompiler(f.Shape).Compile(new SteeringSpec(GraphNumericsTests.Interventions[intervention])).Prompt;

    [Fact]
    public void Zero_steering_matches_the_concat_graphs_over_prefill_and_20_decode_steps()
    {
        var identity = Identity();
        var kv = new SharedKvBuffer(f.Arch, 1, Capacity, float.NaN);
        using var hookedState = f.Hooked.NewState();
        using var plainState = f.Plain.NewState();
        int[] tokens = Prompt;
        var past = 0;
        var bitIdentical = true;
        var worst = 0.0;
        for (var step = 0; step <= 20; step++)
        {
            var batched = f.Batched.Run(kv, 0, [new BatchRow(tokens, past, identity)]);
            var hooked = f.Hooked.Forward(hookedState, tokens, identity);
            var plain = f.Plain.Forward(plainState, tokens, null);
            foreach (var reference in new[] { hooked, plain })
            {
                var rel = Numerics.RelativeL2(batched, reference);
                Assert.True(rel <= 1e-5, $"step {step}: relative L2 {rel:E2}");
                worst = Math.Max(worst, rel);
                for (var r = 0; r < tokens.Length; r++)
                    Assert.Equal(ArgMaxAt(reference, r), ArgMaxAt(batched, r));
            }
            bitIdentical &= batched.AsSpan().SequenceEqual(hooked);
            past += tokens.Length;
            tokens = [ArgMaxAt(batched, tokens.Length - 1)];
        }
        // GQA's kernel sums q·k and p·v in another order than the MatMul graph: close (≈3e-6), not bit for bit.
        output.WriteLine($"batched vs concat graphs: max relative L2 {worst:E2}, "
            + $"bit-identical to the hooked graph: {bitIdentical}");
    }

    /// <summary>
    /// The engine runs a step on decoder_batched.onnx when no row steers or reads out, and on the hooked graph
    /// otherwise, so a row's logits must not depend on which one ran: with all-zero steering every hook is
    /// h + 0 + (0·ReLU(0) + 0)·0, which must vanish bit for bit here too (GQA, ORT's fusions), in the logits and in
    /// the K/V written. Rows of different lengths: three fresh prompts prefilled together, a fourth alone into its
    /// slot, then 20 decode steps of all four.
    /// </summary>
    [Fact]
    public void Batched_graph_without_hooks_is_bit_identical_to_the_hooked_one_with_zero_steering()
    {
        int[][] prompts = [Prompt, [1, 403], [1, 261, 378, 403, 407, 261, 378, 100, 200], [1, 300, 301]];
        var identity = Identity();
        var hookedKv = new SharedKvBuffer(f.Arch, prompts.Length, Capacity, float.NaN);
        var plainKv = new SharedKvBuffer(f.Arch, prompts.Length, Capacity, float.NaN);
        float[] Both(int firstSlot, BatchRow[] rows, string what)
        {
            var hooked = f.Batched.Run(hookedKv, firstSlot, rows);
            var plain = f.BatchedPlain.Run(plainKv, firstSlot, rows);
            Assert.True(plain.AsSpan().SequenceEqual(hooked), $"{what}: max |Δ| {MaxAbsDiff(plain, hooked):E2}");
            return hooked;
        }
        var first = prompts[..3];
        var t = first.Max(p => p.Length);
        var prefill = Both(0, first.Select(p => new BatchRow(p, 0, identity)).ToArray(), "batched prefill");
        var next = first.Select((p, r) => ArgMaxAt(prefill, r * t + p.Length - 1)).ToList();
        var last = prompts[3];
        next.Add(ArgMaxAt(Both(3, [new BatchRow(last, 0, identity)], "single prefill"), last.Length - 1));
        for (var step = 0; step < 20; step++)
        {
            var rows = prompts.Select((p, r) => new BatchRow([next[r]], p.Length + step, identity)).ToArray();
            var logits = Both(0, rows, $"decode step {step}");
            for (var r = 0; r < rows.Length; r++) next[r] = ArgMaxAt(logits, r);
        }
        // Whole buffers as bits: the NaN filling beyond each row's length has the same bits in both.
        static IEnumerable<int> Bits(float[] buffer) => buffer.Select(BitConverter.SingleToInt32Bits);
        for (var l = 0; l < f.Arch.Layers; l++)
        {
            Assert.True(Bits(plainKv.Keys[l]).SequenceEqual(Bits(hookedKv.Keys[l])), $"layer {l}: keys differ");
            Assert.True(Bits(plainKv.Values[l]).SequenceEqual(Bits(hookedKv.Values[l])), $"layer {l}: values differ");
        }
    }

    public static TheoryData<string> InterventionCases() => GraphNumericsTests.InterventionCases();

    [Theory]
    [MemberData(nameof(InterventionCases))]
    public void Steered_batched_graph_matches_the_reference_forward_pass_over_prefill_and_16_decode_steps(string name)
    {
        var steering = Steering(name);
        var reference = new ReferenceTransformer(f.Checkpoint);
        var unsteered = new ReferenceTransformer(f.Checkpoint);
        var kv = new SharedKvBuffer(f.Arch, 1, Capacity);
        var graph = f.Batched.Run(kv, 0, [new BatchRow(Prompt, 0, steering)]);
        var effect = 0.0;
        for (var pos = 0; pos < Prompt.Length; pos++)
        {
            var expected = reference.Forward(Prompt[pos], pos, steering);
            var rel = Numerics.RelativeL2(graph.AsSpan(pos * Vocab, Vocab), expected);
            Assert.True(rel <= 1e-4, $"{name}, prompt position {pos}: relative L2 {rel:E2}");
            effect = Math.Max(effect, Numerics.RelativeL2(expected, unsteered.Forward(Prompt[pos], pos)));
        }
        var token = ArgMaxAt(graph, Prompt.Length - 1);
        for (var step = 0; step < 16; step++)
        {
            var pos = Prompt.Length + step;
            var actual = f.Batched.Run(kv, 0, [new BatchRow([token], pos, steering)]);
            var expected = reference.Forward(token, pos, steering);
            var rel = Numerics.RelativeL2(actual, expected);
            Assert.True(rel <= 1e-4, $"{name}, decode step {step}: relative L2 {rel:E2}");
            effect = Math.Max(effect, Numerics.RelativeL2(expected, unsteered.Forward(token, pos)));
            token = Numerics.ArgMax(expected);
        }
        // The intervention must actually change the logits, or the comparison above proves nothing.
        Assert.True(effect > 1e-2, $"{name}: steering moved the logits by only {effect:E2}");
    }

    public static TheoryData<string> RunCCases() => new(RunCReference.Cases.Select(c => c.Name));

    [Theory]
    [MemberData(nameof(RunCCases))]
    public void Greedy_decoding_through_the_batched_graph_reproduces_run_c_token_for_token(string name)
    {
        var c = RunCReference.Case(name);
        var identity = Identity();
        var kv = new SharedKvBuffer(f.Arch, 1, f.Arch.ContextLength);
        var logits = f.Batched.Run(kv, 0, [new BatchRow(c.PromptIds, 0, identity)]);
        var ids = new List<int> { ArgMaxAt(logits, c.PromptIds.Length - 1) };
        while (ids.Count < c.SampledIds.Length)
        {
            var past = c.PromptIds.Length + ids.Count - 1;
            ids.Add(Numerics.ArgMax(f.Batched.Run(kv, 0, [new BatchRow([ids[^1]], past, identity)])));
        }
        Assert.Equal(c.SampledIds, ids);
    }

    [Fact]
    public void Gqa_writes_new_keys_and_values_in_place_at_seqlens_k_and_nothing_else()
    {
        const float sentinel = 12345f;
        var kv = new SharedKvBuffer(f.Arch, 1, Capacity, sentinel);
        int SlotsWritten() => Enumerable.Range(0, Capacity).Count(p => kv.Keys[0][p * f.Arch.HeadSize] != sentinel);
        var logits = f.Batched.Run(kv, 0, [new BatchRow(Prompt, 0, Identity())]);
        Assert.Equal(Prompt.Length, SlotsWritten());
        f.Batched.Run(kv, 0, [new BatchRow([ArgMaxAt(logits, Prompt.Length - 1)], Prompt.Length, Identity())]);
        Assert.Equal(Prompt.Length + 1, SlotsWritten());
        var next = (Prompt.Length + 1) * f.Arch.HeadSize;
        Assert.All(kv.Keys.Concat(kv.Values), layer => Assert.Equal(sentinel, layer[next]));
    }

    /// <summary>A sequence of the batch test: its prompt, steering, and the slot and decode step it joins at.</summary>
    private sealed record JoiningSequence(string Name, int[] Prompt, SteeringTensors Steering, int Slot,
        int JoinsAtStep);

    /// <summary>
    /// Continuous batching at graph level: four slots of one NaN-filled buffer; three fresh prompts of different
    /// lengths prefill together (right-padded), a fourth alone into its slot, all decode together with their own
    /// seqlens_k and steering, and at step 10 a new sequence takes over slot 1 (stale keys of the old one beyond its
    /// length). Every row's logits at every step must be bit-identical to that sequence run alone.
    /// </summary>
    [Fact]
    public void Rows_of_different_lengths_and_steering_decoding_together_are_bit_identical_to_each_row_alone()
    {
        const int steps = 20, replaceAt = 10;
        JoiningSequence[] sequences =
        [
            new("A", Prompt, Steering("add at blocks.2.hook_resid_post"), 0, 0),
            new("B", [1, 403], Identity(), 1, 0),
            new("C", [1, 261, 378, 403, 407, 261, 378, 100, 200], Steering("several sites and layers"), 2, 0),
            new("D", [1, 300, 301], Steering("clamp c=3 (JumpReLU 0.2) at blocks.3.hook_attn_out"), 3, 0),
            new("E", [1, 403, 407, 261], Steering("rescale r=-2 at blocks.1.hook_resid_post"), 1, replaceAt),
        ];
        var alone = sequences.ToDictionary(s => s.Name, s => RunAlone(s, steps - s.JoinsAtStep));

        var kv = new SharedKvBuffer(f.Arch, 4, Capacity, float.NaN);
        void AssertPrefill(float[] logits, int row, int t, JoiningSequence s) =>
            Assert.True(logits.AsSpan(row * t * Vocab, s.Prompt.Length * Vocab).SequenceEqual(alone[s.Name].Logits[0]),
                $"{s.Name}: prefill logits differ from the sequence run alone");
        // Fresh prompts only: with T > 1 GQA ignores the rows' past (see the class comment).
        var first = sequences[..3];
        var prefill = f.Batched.Run(kv, 0, first.Select(s => new BatchRow(s.Prompt, 0, s.Steering)).ToArray());
        for (var r = 0; r < first.Length; r++) AssertPrefill(prefill, r, first.Max(s => s.Prompt.Length), first[r]);
        var d = sequences[3];
        AssertPrefill(f.Batched.Run(kv, d.Slot, [new BatchRow(d.Prompt, 0, d.Steering)]), 0, d.Prompt.Length, d);

        var active = sequences[..4].ToArray();
        for (var step = 0; step < steps; step++)
        {
            if (step == replaceAt)
            {
                var e = sequences[4];
                AssertPrefill(f.Batched.Run(kv, e.Slot, [new BatchRow(e.Prompt, 0, e.Steering)]), 0, e.Prompt.Length, e);
                active[e.Slot] = e;
            }
            var rows = active.Select(s =>
            {
                var i = step - s.JoinsAtStep;
                return new BatchRow([alone[s.Name].Tokens[i]], s.Prompt.Length + i, s.Steering);
            }).ToArray();
            var logits = f.Batched.Run(kv, 0, rows);
            for (var slot = 0; slot < active.Length; slot++)
            {
                var s = active[slot];
                var expected = alone[s.Name].Logits[1 + step - s.JoinsAtStep];
                var actual = logits.AsSpan(slot * Vocab, Vocab);
                Assert.True(actual.SequenceEqual(expected),
                    $"{s.Name} in slot {slot}, decode step {step}: max |Δ| {MaxAbsDiff(actual, expected):E2}");
            }
        }
    }

    /// <summary>A sequence alone in a fresh batch-1 buffer: logits of its prefill and of each greedy step.</summary>
    private (List<float[]> Logits, List<int> Tokens) RunAlone(JoiningSequence s, int steps)
    {
        var kv = new SharedKvBuffer(f.Arch, 1, Capacity);
        var logits = new List<float[]> { f.Batched.Run(kv, 0, [new BatchRow(s.Prompt, 0, s.Steering)]) };
        var tokens = new List<int> { ArgMaxAt(logits[0], s.Prompt.Length - 1) };
        for (var i = 0; i < steps; i++)
        {
            logits.Add(f.Batched.Run(kv, 0, [new BatchRow([tokens[i]], s.Prompt.Length + i, s.Steering)]));
            tokens.Add(Numerics.ArgMax(logits[^1]));
        }
        return (logits, tokens);
    }

    [Fact]
    public void A_prompt_continuing_after_earlier_tokens_works_for_one_row_and_is_refused_for_a_batch()
    {
        int[] tokens = [1, 403, 407, 261, 378, 100, 200];
        var identity = Identity();
        var whole = f.Batched.Run(new SharedKvBuffer(f.Arch, 1, Capacity), 0, [new BatchRow(tokens, 0, identity)]);
        var kv = new SharedKvBuffer(f.Arch, 1, Capacity, float.NaN);
        var head = f.Batched.Run(kv, 0, [new BatchRow(tokens[..3], 0, identity)]);
        var tail = f.Batched.Run(kv, 0, [new BatchRow(tokens[3..], 3, identity)]);
        Assert.True(head.AsSpan().SequenceEqual(whole.AsSpan(0, 3 * Vocab)));
        Assert.True(tail.AsSpan().SequenceEqual(whole.AsSpan(3 * Vocab)), "chunked prefill differs from one prefill");

        var two = new SharedKvBuffer(f.Arch, 2, Capacity);
        f.Batched.Run(two, 0, [new BatchRow(tokens[..3], 0, identity)]);
        var e = Assert.Throws<OnnxRuntimeException>(() =>
            f.Batched.Run(two, 0, [new BatchRow(tokens[3..], 3, identity), new BatchRow(tokens[..2], 0, identity)]));
        Assert.Contains("batch_size must be 1 when sequence_length > 1 and past context is given", e.Message);
    }

    private int ArgMaxAt(float[] logits, int row) => Numerics.ArgMax(logits.AsSpan(row * Vocab, Vocab));

    private static float MaxAbsDiff(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        var max = 0f;
        for (var i = 0; i < a.Length; i++) max = Math.Max(max, Math.Abs(a[i] - b[i]));
        return max;
    }
}

/// <summary>The shipped folder's four graphs, each in its own CPU session, and the reference pass's weights.</summary>
public sealed class BatchedGraphFixture : IDisposable
{
    public BatchedGraphFixture()
    {
        var folder = ModelFolder.Open(RepoPaths.Stories260kModel);
        Arch = folder.Manifest.Architecture;
        Shape = new SteeringShape(Arch.Layers, Arch.DModel, folder.Manifest.Steering.SlotsPerSite);
        var batchedPath = folder.BatchedGraphPath
            ?? throw new InvalidOperationException("the shipped folder has no batched graph");
        Batched = new SharedKvDriver(Open(batchedPath), Arch);
        BatchedPlain = new SharedKvDriver(Open(folder.BatchedPlainGraphPath
            ?? throw new InvalidOperationException("the shipped folder has no batched graph without hooks")), Arch);
        Hooked = new ConcatDriver(Open(folder.HookedGraphPath), Arch);
        Plain = new ConcatDriver(Open(folder.PlainGraphPath), Arch);
        Checkpoint = Llama2cCheckpoint.Read(Path.Combine(folder.Directory, folder.Manifest.Provenance.Checkpoint.File));
    }

    public ModelArchitecture Arch { get; }
    public SteeringShape Shape { get; }
    internal SharedKvDriver Batched { get; }
    internal SharedKvDriver BatchedPlain { get; }
    internal ConcatDriver Hooked { get; }
    internal ConcatDriver Plain { get; }
    public LoadedCheckpoint Checkpoint { get; }

    // The engine's settings: bit-identity across batch sizes needs the optimizer on (platform notes).
    private static InferenceSession Open(string path)
    {
        using var options = new SessionOptions { GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL };
        FeatureFlowOps.Register(options); // decoder_hooked_batched.onnx's hooks are the SteeringHook operator
        return new InferenceSession(path, options);
    }

    public void Dispose()
    {
        Batched.Dispose();
        BatchedPlain.Dispose();
        Hooked.Dispose();
        Plain.Dispose();
    }
}

/// <summary>One row of a batched run: its new tokens, how many tokens its slot already holds, its steering.</summary>
internal sealed record BatchRow(int[] Tokens, int Past, SteeringTensors? Steering);

/// <summary>Per layer, one [rows, kv_heads, capacity, head_size] key and value buffer; each row's slot is contiguous.
/// </summary>
internal sealed class SharedKvBuffer
{
    public SharedKvBuffer(ModelArchitecture arch, int rows, int capacity, float fill = 0f)
    {
        Rows = rows;
        Capacity = capacity;
        SlotLength = arch.KvHeads * capacity * arch.HeadSize;
        float[] Buffer()
        {
            var b = new float[rows * SlotLength];
            Array.Fill(b, fill);
            return b;
        }
        Keys = Enumerable.Range(0, arch.Layers).Select(_ => Buffer()).ToArray();
        Values = Enumerable.Range(0, arch.Layers).Select(_ => Buffer()).ToArray();
    }

    public int Rows { get; }
    public int Capacity { get; }
    public int SlotLength { get; }
    public float[][] Keys { get; }
    public float[][] Values { get; }
}

/// <summary>Owns the OrtValues of one run (they pin the arrays they wrap until disposed).</summary>
internal sealed class OrtRunValues : IDisposable
{
    private readonly List<OrtValue> _values = [];

    public OrtValue Over<T>(Memory<T> data, params long[] shape) where T : unmanaged
    {
        var v = OrtValue.CreateTensorValueFromMemory(OrtMemoryInfo.DefaultInstance, data, shape);
        _values.Add(v);
        return v;
    }

    public OrtValue Over<T>(T[] data, params long[] shape) where T : unmanaged => Over(data.AsMemory(), shape);

    /// <summary>The graph's steering shape (slots from steering.decoder [B, sites, slots, d]); null without hooks.
    /// </summary>
    public static SteeringShape? SteeringShapeOf(InferenceSession session, ModelArchitecture arch) =>
        session.InputMetadata.TryGetValue(GraphNames.SteeringDecoder, out var decoder)
            ? new SteeringShape(arch.Layers, arch.DModel, decoder.Dimensions[2])
            : null;

    /// <summary>The four steering inputs for these rows, in graph order (null rows steer nothing).</summary>
    public IEnumerable<(string Name, OrtValue Value)> Steering(IReadOnlyList<SteeringTensors?> rows, SteeringShape shape)
    {
        long n = rows.Count, sites = shape.Sites, d = shape.DModel, k = shape.SlotsPerSite;
        var all = rows.Select(r => r ?? new SteeringTensors(shape)).ToArray();
        float[] Concat(Func<SteeringTensors, float[]> part) => all.SelectMany(part).ToArray();
        yield return (GraphNames.SteeringAdd, Over(Concat(t => t.Add), n, sites, d));
        yield return (GraphNames.SteeringEncoder, Over(Concat(t => t.Encoder), n, sites, d, k));
        yield return (GraphNames.SteeringDecoder, Over(Concat(t => t.Decoder), n, sites, k, d));
        yield return (GraphNames.SteeringCoefficients,
            Over(Concat(t => t.Coefficients), n, sites, GraphNames.CoefficientRows, k));
    }

    public void Dispose()
    {
        foreach (var v in _values) v.Dispose();
    }
}

/// <summary>
/// Runs a SharedBuffer graph (hooked or not) over consecutive slots of a <see cref="SharedKvBuffer"/>: each slot's
/// buffer is bound, via IOBinding, as both past and present, so GQA appends in place. Rows are right-padded to the
/// longest; a graph without hooks ignores the rows' steering.
/// </summary>
internal sealed class SharedKvDriver(InferenceSession session, ModelArchitecture arch) : IDisposable
{
    private readonly SteeringShape? _shape = OrtRunValues.SteeringShapeOf(session, arch);

    /// <summary>Runs <paramref name="rows"/> in slots firstSlot …; returns logits [rows, T, vocab].</summary>
    public float[] Run(SharedKvBuffer kv, int firstSlot, IReadOnlyList<BatchRow> rows) =>
        Run(kv, firstSlot, rows, []).Logits;

    /// <summary>As <see cref="Run(SharedKvBuffer, int, IReadOnlyList{BatchRow})"/>, also reading out the graph's site
    /// outputs of <paramref name="readout"/>, each [rows, T, d].</summary>
    public (float[] Logits, float[][] Sites) Run(SharedKvBuffer kv, int firstSlot, IReadOnlyList<BatchRow> rows,
        IReadOnlyList<Site> readout)
    {
        int n = rows.Count, t = rows.Max(r => r.Tokens.Length);
        if (firstSlot + n > kv.Rows)
            throw new ArgumentException($"slots {firstSlot}..{firstSlot + n - 1} are not in the buffer");
        var ids = new long[n * t];
        var positions = new long[n * t];
        var seqlensK = new int[n];
        for (var r = 0; r < n; r++)
        {
            var row = rows[r];
            if (row.Past + t > kv.Capacity)
                throw new ArgumentException($"row {r} would pass the buffer's capacity {kv.Capacity}");
            for (var i = 0; i < t; i++)
            {
                ids[r * t + i] = i < row.Tokens.Length ? row.Tokens[i] : 0;
                positions[r * t + i] = row.Past + i;
            }
            seqlensK[r] = row.Past + row.Tokens.Length - 1;
        }

        using var values = new OrtRunValues();
        using var binding = session.CreateIoBinding();
        binding.BindInput(GraphNames.InputIds, values.Over(ids, n, t));
        binding.BindInput(GraphNames.PositionIds, values.Over(positions, n, t));
        binding.BindInput(GraphNames.SeqlensK, values.Over(seqlensK, n));
        var total = rows.Max(r => r.Past + r.Tokens.Length);
        binding.BindInput(GraphNames.TotalSequenceLength, values.Over(new[] { total })); // a scalar: shape []
        long[] kvShape = [n, arch.KvHeads, kv.Capacity, arch.HeadSize];
        for (var l = 0; l < arch.Layers; l++)
        {
            var key = values.Over(kv.Keys[l].AsMemory(firstSlot * kv.SlotLength, n * kv.SlotLength), kvShape);
            var value = values.Over(kv.Values[l].AsMemory(firstSlot * kv.SlotLength, n * kv.SlotLength), kvShape);
            binding.BindInput(GraphNames.PastKey(l), key);
            binding.BindOutput(GraphNames.PresentKey(l), key);
            binding.BindInput(GraphNames.PastValue(l), value);
            binding.BindOutput(GraphNames.PresentValue(l), value);
        }
        if (_shape is not null)
            foreach (var (name, value) in values.Steering(rows.Select(r => r.Steering).ToArray(), _shape))
                binding.BindInput(name, value);
        var logits = new float[n * t * arch.VocabSize];
        binding.BindOutput(GraphNames.Logits, values.Over(logits, n, t, arch.VocabSize));
        var sites = readout.Select(_ => new float[n * t * arch.DModel]).ToArray();
        for (var i = 0; i < readout.Count; i++)
            binding.BindOutput(readout[i].HookName, values.Over(sites[i], n, t, arch.DModel));
        using var runOptions = new RunOptions();
        session.RunWithBinding(runOptions, binding);
        return (logits, sites);
    }

    public void Dispose() => session.Dispose();
}

/// <summary>Runs a Concat graph (hooked or plain) for one row, the KV cache growing by one present per step.</summary>
internal sealed class ConcatDriver(InferenceSession session, ModelArchitecture arch) : IDisposable
{
    private readonly SteeringShape? _shape = OrtRunValues.SteeringShapeOf(session, arch);

    public ConcatState NewState() => new(arch);

    public float[] Forward(ConcatState state, int[] tokens, SteeringTensors? steering)
    {
        int t = tokens.Length, total = state.Position + t;
        using var values = new OrtRunValues();
        var positions = Enumerable.Range(state.Position, t).Select(p => (long)p).ToArray();
        var inputs = new List<(string Name, OrtValue Value)>
        {
            (GraphNames.InputIds, values.Over(tokens.Select(x => (long)x).ToArray(), 1, t)),
            (GraphNames.AttentionMask, values.Over(Enumerable.Repeat(1L, total).ToArray(), 1, total)),
            (GraphNames.PositionIds, values.Over(positions, 1, t)),
        };
        for (var l = 0; l < arch.Layers; l++)
        {
            inputs.Add((GraphNames.PastKey(l), state.Past[2 * l]));
            inputs.Add((GraphNames.PastValue(l), state.Past[2 * l + 1]));
        }
        if (_shape is not null) inputs.AddRange(values.Steering([steering], _shape));
        string[] outputs = [GraphNames.Logits, .. Enumerable.Range(0, arch.Layers)
            .SelectMany(l => new[] { GraphNames.PresentKey(l), GraphNames.PresentValue(l) })];
        using var runOptions = new RunOptions();
        var results = session.Run(runOptions, inputs.Select(i => i.Name).ToArray(), inputs.Select(i => i.Value).ToArray(),
            outputs);
        var logits = results[0].GetTensorDataAsSpan<float>().ToArray();
        results[0].Dispose();
        state.Advance(t, results.Skip(1).ToArray());
        return logits;
    }

    public void Dispose() => session.Dispose();
}

internal sealed class ConcatState : IDisposable
{
    public ConcatState(ModelArchitecture arch)
    {
        long[] empty = [1, arch.KvHeads, 0, arch.HeadSize];
        Past = Enumerable.Range(0, 2 * arch.Layers)
            .Select(_ => OrtValue.CreateTensorValueFromMemory(Array.Empty<float>(), empty)).ToArray();
    }

    public OrtValue[] Past { get; private set; }
    public int Position { get; private set; }

    public void Advance(int count, OrtValue[] presents)
    {
        foreach (var v in Past) v.Dispose();
        Past = presents;
        Position += count;
    }

    public void Dispose()
    {
        foreach (var v in Past) v.Dispose();
    }
}
