using FeatureFlow.Onnx.CustomOps;
using Microsoft.ML.OnnxRuntime;

namespace FeatureFlow.Engine;

/// <summary>The execution provider a session really runs on, and why (for logs and GetModelInfo).</summary>
public sealed record ExecutionProviderInfo(string Name, string Reason);

public static class SessionFactory
{
    /// <summary>A session over a graph built in memory (no file), e.g. the flow-map matcher.</summary>
    public static (InferenceSession Session, ExecutionProviderInfo Provider) Create(byte[] model, EngineOptions options)
    {
        using var sessionOptions = NewSessionOptions(options, out var provider);
        return (new InferenceSession(model, sessionOptions), provider);
    }

    /// <param name="weights">
    /// The folder's shared weights, when several sessions open its graphs: each gets the same initializers and one
    /// container of packed weights, so a second graph over the same weights costs no weight memory.
    /// </param>
    public static (InferenceSession Session, ExecutionProviderInfo Provider) Create(string modelPath, EngineOptions options,
        SharedWeights? weights = null)
    {
        using var sessionOptions = NewSessionOptions(options, out var provider);
        try
        {
            if (weights is null) return (new InferenceSession(modelPath, sessionOptions), provider);
            weights.AddTo(sessionOptions);
            var session = new InferenceSession(modelPath, sessionOptions, weights.Packed);
            weights.ReleaseResidentPages();
            return (session, provider);
        }
        catch (OnnxRuntimeException e)
        {
            throw new InvalidDataException($"{modelPath}: ONNX Runtime could not load the graph: {e.Message}", e);
        }
    }

    private static SessionOptions NewSessionOptions(EngineOptions options, out ExecutionProviderInfo provider)
    {
        var sessionOptions = new SessionOptions { GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL };
        // Every session may meet the SteeringHook operator (the batched hooked graph's hooks); graphs without it
        // are unaffected.
        FeatureFlowOps.Register(sessionOptions);
        if (options.IntraOpThreads > 0) sessionOptions.IntraOpNumThreads = options.IntraOpThreads;
        // ONNX Runtime's per-operator profile (a Chrome trace JSON), for finding where a step's time goes.
        if (Environment.GetEnvironmentVariable("FEATUREFLOW_ORT_PROFILE") is { Length: > 0 } prefix)
        {
            // The prefix first: enabling profiling hands ONNX Runtime the prefix set at that moment.
            sessionOptions.ProfileOutputPathPrefix = prefix;
            sessionOptions.EnableProfiling = true;
        }
        try
        {
            provider = ChooseProvider(sessionOptions, options);
            return sessionOptions;
        }
        catch
        {
            sessionOptions.Dispose();
            throw;
        }
    }

    private static ExecutionProviderInfo ChooseProvider(SessionOptions sessionOptions, EngineOptions options)
    {
        if (options.ExecutionProvider == ExecutionProviderPreference.Cpu)
            return new ExecutionProviderInfo("CPUExecutionProvider", "CPU requested");
        var env = OrtEnv.Instance();
        var logLevel = env.EnvLogLevel;
        try
        {
            // A failed probe is expected on CPU machines: keep ONNX Runtime's native error out of the log
            // (the reason is reported below). GetAvailableProviders() lists CUDA even where its libraries
            // cannot load; only appending tells.
            if (options.ExecutionProvider == ExecutionProviderPreference.Auto) env.EnvLogLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_FATAL;
            sessionOptions.AppendExecutionProvider_CUDA(options.CudaDeviceId);
            return new ExecutionProviderInfo("CUDAExecutionProvider", $"CUDA device {options.CudaDeviceId}");
        }
        catch (Exception e) when (e is OnnxRuntimeException or EntryPointNotFoundException or DllNotFoundException)
        {
            if (options.ExecutionProvider == ExecutionProviderPreference.Cuda)
                throw new InvalidOperationException($"CUDA was required but could not be loaded: {e.Message}", e);
            return new ExecutionProviderInfo("CPUExecutionProvider", $"CUDA unavailable ({FirstLine(e.Message)}); using CPU");
        }
        finally
        {
            env.EnvLogLevel = logLevel;
        }
    }

    private static string FirstLine(string s) => s.Split('\n', 2)[0].Trim();
}
