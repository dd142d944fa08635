using System.Runtime.CompilerServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Threading.Channels;
using FeatureFlow.Models.Folder;
using FeatureFlow.Models.Tokenization;
using FeatureFlow.Steering;
using Microsoft.ML.OnnxRuntimeGenAI;

namespace FeatureFlow.Engine;

/// <summary>
/// Generates with ONNX Runtime GenAI's own loop for a folder with <c>genai_config.json</c> (a model-builder
/// folder, or ours): one GenAI <see cref="Generator"/> per request. When the decoder graph has our four steering
/// inputs, the request's compiled steering is passed with <see cref="Generator.SetModelInput"/>; prompt-only and
/// generated-only terms switch when the prompt has run. Greedy or GenAI's own sampling; no read-out sites and no
/// log-probabilities (GenAI does not expose them per step).
/// </summary>
public sealed class GenAiBackend : IDisposable
{
    private readonly Config _config;
    private readonly Model _model;

    /// <param name="directory">folder with genai_config.json and the decoder graph it names</param>
    /// <param name="tokenizer">the folder's tokenizer: its BOS and EOS end a generation, its pieces make the text</param>
    public GenAiBackend(string directory, ITokenizer tokenizer, GenAiBackendOptions? options = null)
    {
        options ??= new GenAiBackendOptions();
        options.Validate();
        Tokenizer = tokenizer;
        var configPath = Path.Combine(directory, GenAiConfig.FileName);
        var metadata = HfModelMetadata.Read(directory);
        ContextLength = metadata.ContextLength
            ?? throw new InvalidDataException($"{configPath}: model.context_length is missing");
        VocabSize = metadata.VocabSize ?? throw new InvalidDataException($"{configPath}: model.vocab_size is missing");
        DecoderPath = Path.Combine(directory, options.DecoderFile ?? DecoderFile(configPath));
        if (!File.Exists(DecoderPath))
            throw new FileNotFoundException(
                $"{configPath}: model.decoder.filename names {DecoderPath}, which is missing", DecoderPath);
        SteeringShape = GenAiSteeringInputs.ReadShape(DecoderPath);
        Compiler = SteeringShape is { } shape ? new SteeringCompiler(shape) : null;

        _config = new Config(directory);
        if (options.Providers.Count > 0)
        {
            _config.ClearProviders();
            foreach (var provider in options.Providers) _config.AppendProvider(provider);
        }
        var decoder = new JsonObject();
        if (options.IntraOpThreads > 0)
            decoder["session_options"] = new JsonObject { ["intra_op_num_threads"] = options.IntraOpThreads };
        if (options.DecoderFile is { } file) decoder["filename"] = file;
        if (decoder.Count > 0) _config.Overlay(new JsonObject { ["model"] = new JsonObject { ["decoder"] = decoder } }.ToJsonString());
        _model = new Model(_config);
    }

    public ITokenizer Tokenizer { get; }
    public int ContextLength { get; }
    public int VocabSize { get; }
    public string DecoderPath { get; }
    /// <summary>The decoder graph's steering inputs; null when it has none (only unsteered requests run then).</summary>
    public SteeringShape? SteeringShape { get; }
    /// <summary>Checks and compiles steering for the decoder graph; null when the graph has no steering inputs.</summary>
    public SteeringCompiler? Compiler { get; }

    /// <summary>
    /// Validates and compiles <paramref name="request"/> (throwing <see cref="FieldValidationException"/> before
    /// anything runs), then streams its tokens as our engine does: the text that became final with each token,
    /// ending at BOS or EOS (not emitted), a stop string, or max_tokens. Cancelling or abandoning the stream ends
    /// the generator at its next token.
    /// </summary>
    public async IAsyncEnumerable<GenerationUpdate> GenerateAsync(GenerationRequest request,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var plan = Prepare(request);
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var channel = Channel.CreateUnbounded<GenerationUpdate>(
            new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        // GenAI's calls block; the generator runs on its own thread and streams through the channel.
        var producer = Task.Factory.StartNew(() => Run(request, plan, channel.Writer, stop.Token),
            CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
        try
        {
            await foreach (var update in channel.Reader.ReadAllAsync(cancellationToken).ConfigureAwait(false))
                yield return update;
        }
        finally
        {
            await stop.CancelAsync().ConfigureAwait(false);
            await producer.ConfigureAwait(false);
        }
    }

    private SteeringPlan? Prepare(GenerationRequest request)
    {
        Validate(request);
        if (Compiler is not null) return Compiler.Compile(request.Steering);
        if (request.Steering.Terms.Count > 0)
            throw new FieldValidationException("steering",
                $"{DecoderPath} has no steering inputs; this model cannot be steered");
        return null;
    }

    private void Validate(GenerationRequest request)
    {
        request.ValidateFor(VocabSize, ContextLength);
        if (request.Readout.Count > 0)
            throw new FieldValidationException("readout.hooks", "the GenAI backend cannot read out sites");
        if (request.TopLogProbs > 0)
            throw new FieldValidationException("top_logprobs", "the GenAI backend does not report log-probabilities");
    }

    private void Run(GenerationRequest request, SteeringPlan? plan, ChannelWriter<GenerationUpdate> output,
        CancellationToken cancellationToken)
    {
        try
        {
            // Declared first, disposed last: the generator reads these buffers until it is gone.
            using var steering = SteeringShape is { } shape ? new GenAiSteeringInputs(shape) : null;
            using var parameters = new GeneratorParams(_model);
            SetSearchOptions(parameters, request);
            using var generator = new Generator(_model, parameters);
            if (steering is not null)
            {
                steering.Write(plan!.Prompt);
                steering.BindTo(generator);
            }
            generator.AppendTokens(request.PromptIds);
            // The prompt has run (GenAI computes its logits on append); every later run feeds a generated token.
            steering?.Write(plan!.Generated);

            var text = new TextStream(Tokenizer, request.PromptIds[^1], request.Stop);
            var completion = 0;
            Usage Usage() => new(request.PromptIds.Length, completion);
            while (!cancellationToken.IsCancellationRequested)
            {
                if (generator.IsDone())
                {
                    // GenAI's own end (its EOS from genai_config.json) came before ours.
                    text.Flush();
                    output.TryWrite(new GenerationUpdate(text.TakeFinal(), [], FinishReason.Stop, Usage()));
                    break;
                }
                generator.GenerateNextToken();
                var next = generator.GetNextTokens()[0];
                if (next == Tokenizer.BosId || next == Tokenizer.EosId)
                {
                    text.Flush();
                    output.TryWrite(new GenerationUpdate(text.TakeFinal(), [], FinishReason.Stop, Usage()));
                    break;
                }
                completion++;
                text.Push(next);
                if (text.Stopped)
                {
                    output.TryWrite(new GenerationUpdate(text.TakeFinal(), [next], FinishReason.Stop, Usage()));
                    break;
                }
                if (completion == request.MaxTokens)
                {
                    text.Flush();
                    output.TryWrite(new GenerationUpdate(text.TakeFinal(), [next], FinishReason.Length, Usage()));
                    break;
                }
                output.TryWrite(new GenerationUpdate(text.TakeFinal(), [next]));
            }
            output.TryComplete();
        }
        catch (Exception e)
        {
            // The reader sees every failure; GenAI's own become a failed generation like the engine's.
            output.TryComplete(e is OnnxRuntimeGenAIException
                ? new GenerationFailedException($"ONNX Runtime GenAI failed: {e.Message}", "genai_failed")
                : e);
        }
    }

    private void SetSearchOptions(GeneratorParams parameters, GenerationRequest request)
    {
        var s = request.Sampling;
        parameters.SetSearchOption("max_length", request.PromptIds.Length + request.MaxTokens);
        // Our requests never ask for these; a model folder's genai_config.json may set them.
        parameters.SetSearchOption("min_length", 0);
        parameters.SetSearchOption("repetition_penalty", 1.0);
        parameters.SetSearchOption("do_sample", s.Temperature > 0f);
        if (s.Temperature == 0f) return;
        parameters.SetSearchOption("temperature", s.Temperature);
        parameters.SetSearchOption("top_p", s.TopP);
        // GenAI has no "off" for top_k: the whole vocabulary is.
        parameters.SetSearchOption("top_k", s.TopK == 0 ? VocabSize : s.TopK);
        parameters.SetSearchOption("random_seed", (int)(s.Seed % int.MaxValue));
    }

    private static string DecoderFile(string configPath)
    {
        try
        {
            var root = JsonNode.Parse(File.ReadAllText(configPath));
            return root?["model"]?["decoder"]?["filename"]?.GetValue<string>()
                ?? throw new InvalidDataException($"{configPath}: model.decoder.filename is missing");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{configPath}: not valid JSON ({e.Message})", e);
        }
    }

    public void Dispose()
    {
        _model.Dispose();
        _config.Dispose();
    }
}
