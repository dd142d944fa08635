using FeatureFlow.Api.V1;
using FeatureFlow.Engine;
using FeatureFlow.Steering;
using FeatureFlow.Steering.Packs;
using Grpc.Core;

namespace FeatureFlow.Server;

public sealed class InferenceService(GenerationEngine engine, SteeringCatalog catalog, ExperimentService experiments,
    GenerationPipeline pipeline, ServerLifecycle lifecycle, ServerOptions options, ILogger<InferenceService> logger) : Inference.InferenceBase
{
    public override async Task Generate(GenerateRequest request, IServerStreamWriter<GenerateResponse> responseStream, ServerCallContext context)
    {
        var ct = context.CancellationToken;
        // Validated, compiled and queued before anything is streamed: a bad or refused request never enters the queue.
        using var submitted = Call(() => pipeline.Submit(request, Security.Caller.Of(context.GetHttpContext())), context);
        var generation = submitted.Rows[0];
        using var scope = logger.BeginScope(new Dictionary<string, object> { ["RequestId"] = submitted.RequestId });
        await context.WriteResponseHeadersAsync(new Metadata { { "x-request-id", submitted.RequestId } });
        var first = true;
        var tokens = 0;
        try
        {
            // Tokens that piled up while the previous message was being written go out together in the next one.
            await foreach (var update in generation.ReadCoalescedAsync(ct))
            {
                var response = RequestMapper.ToApi(update, submitted.Readout);
                if (first) (response.RequestId, response.ExperimentArm) = (submitted.RequestId, submitted.Arm ?? "");
                first = false;
                tokens += update.TokenIds.Count;
                await responseStream.WriteAsync(response, ct);
            }
            pipeline.Finished(submitted, tokens);
        }
        catch (Exception e) when (e is GenerationFailedException or EngineShutdownException)
        {
            if (e is GenerationFailedException) logger.LogWarning("generation {Id}: {Reason}", generation.Id, e.Message);
            throw Refusal.Of(e)!.ToRpc(context);
        }
        catch (Exception e) when (e is not OperationCanceledException and not RpcException)
        {
            logger.LogError(e, "generation {Id} failed", generation.Id);
            throw new RpcException(new Status(StatusCode.Internal, $"generation failed: {e.Message}"));
        }
    }

    public override async Task Compare(CompareRequest request, IServerStreamWriter<CompareResponse> responseStream, ServerCallContext context)
    {
        try
        {
            await RunCompare(request, responseStream, Security.Caller.Of(context.GetHttpContext()), context.CancellationToken);
        }
        catch (Exception e) when (e is not OperationCanceledException and not RpcException)
        {
            throw ToRpc(e, context);
        }
    }

    /// <summary>
    /// Runs a Compare for <paramref name="caller"/>, writing every arm's updates and then one summary per arm. Refusals
    /// and failures are thrown as domain exceptions (each transport answers them its own way).
    /// </summary>
    public async Task RunCompare(CompareRequest request, IServerStreamWriter<CompareResponse> responseStream, Security.Caller caller,
        CancellationToken ct)
    {
        lifecycle.EnsureAccepting();
        var (arms, readout) = pipeline.MapCompare(request, options.MaxCompareArms);
        // All arms are queued together (or refused together), so they run as rows of the same batches.
        var (generations, lease) = pipeline.SubmitArms(arms, caller);
        try
        {
            var summaries = await CompareRunner.StreamAsync(arms, generations, readout, responseStream, engine.Scorer, ct);
            foreach (var summary in summaries) await responseStream.WriteAsync(new CompareResponse { Arm = summary.Arm, Summary = summary }, ct);
        }
        catch (Exception e) when (e is not OperationCanceledException and not EngineShutdownException and not RpcException)
        {
            logger.LogError(e, "compare of {Arms} arms failed", arms.Count);
            throw new GenerationFailedException($"compare failed: {e.Message}");
        }
        finally
        {
            foreach (var g in generations) g.Dispose();
            lease.End(generations.Sum(g => (long)g.CompletionTokens));
        }
    }

    /// <summary>Runs a validation or submission step, turning its refusals into the gRPC status that says why.</summary>
    private static T Call<T>(Func<T> step, ServerCallContext context)
    {
        try
        {
            return step();
        }
        catch (Exception e) when (e is not RpcException and not OperationCanceledException)
        {
            throw ToRpc(e, context);
        }
    }

    /// <summary>A refusal or failure as the gRPC status that says why (unknown failures rethrown as they are).</summary>
    private static Exception ToRpc(Exception e, ServerCallContext context) => Refusal.Of(e)?.ToRpc(context) ?? e;

    public override Task<ModelInfo> GetModelInfo(GetModelInfoRequest request, ServerCallContext context) => Task.FromResult(ModelInfo());

    public ModelInfo ModelInfo()
    {
        var m = engine.Folder.Manifest;
        var info = new ModelInfo
        {
            Name = m.Name,
            Layers = m.Architecture.Layers,
            DModel = m.Architecture.DModel,
            VocabSize = m.Architecture.VocabSize,
            ContextLength = m.Architecture.ContextLength,
            Heads = m.Architecture.Heads,
            KvHeads = m.Architecture.KvHeads,
            SlotsPerSite = engine.SteeringShape.SlotsPerSite,
            ExecutionProvider = engine.Provider.Name,
            ExecutionProviderReason = engine.Provider.Reason,
        };
        info.Sites.AddRange(m.Steering.Sites);
        return info;
    }

    public override Task<ListPacksResponse> ListPacks(ListPacksRequest request, ServerCallContext context) => Task.FromResult(PackList());

    public ListPacksResponse PackList()
    {
        var response = new ListPacksResponse();
        response.Packs.AddRange(catalog.Packs.Packs.OrderBy(p => p.Name, StringComparer.Ordinal).Select(ToApi));
        response.Refused.AddRange(catalog.Packs.Errors.Select(e => new RefusedPack { Path = e.Path, Reason = e.Message }));
        return response;
    }

    public override Task<PackInfo> GetPack(GetPackRequest request, ServerCallContext context) =>
        Task.FromResult(ToApi(Call(() => catalog.Packs.Get(request.Name, "name"), context)));

    [Security.AdminOnly]
    public override Task<PackInfo> PutPack(PutPackRequest request, ServerCallContext context)
    {
        var pack = Call(() => catalog.Packs.Put(request.Name, request.Content.ToByteArray()), context);
        logger.LogInformation("pack {Name}@{Hash} stored by PutPack ({Caller})", pack.Name, pack.Metadata.ContentSha256[..12],
            Security.Caller.Of(context.GetHttpContext()).Id);
        return Task.FromResult(ToApi(pack));
    }

    [Security.AdminOnly]
    public override Task<DeletePackResponse> DeletePack(DeletePackRequest request, ServerCallContext context)
    {
        if (!Call(() => catalog.Packs.Delete(request.Name), context))
            throw new RpcException(new Status(StatusCode.NotFound, $"name: no steering pack named '{request.Name}'"));
        logger.LogInformation("pack {Name} deleted by DeletePack ({Caller})", request.Name, Security.Caller.Of(context.GetHttpContext()).Id);
        return Task.FromResult(new DeletePackResponse());
    }

    public override Task<ListExperimentsResponse> ListExperiments(ListExperimentsRequest request, ServerCallContext context) =>
        Task.FromResult(ExperimentList());

    public ListExperimentsResponse ExperimentList()
    {
        var config = experiments.Current;
        var response = new ListExperimentsResponse { ConfigVersion = experiments.Version };
        response.Experiments.AddRange(config.Experiments.Keys.Order(StringComparer.Ordinal).Select(experiments.Info));
        return response;
    }

    public override Task<ExperimentInfo> GetExperiment(GetExperimentRequest request, ServerCallContext context) =>
        Task.FromResult(Call(() => experiments.Info(request.Name), context));

    public override Task<RecordOutcomeResponse> RecordOutcome(RecordOutcomeRequest request, ServerCallContext context) =>
        Task.FromResult(new RecordOutcomeResponse { Arm = Call(() => experiments.RecordOutcome(request), context) });

    private PackInfo ToApi(SteeringPack pack)
    {
        var m = pack.Metadata;
        var info = new PackInfo
        {
            Name = m.Name, Description = m.Description, Seed = m.Seed, Terms = pack.Terms.Count, Operation = m.Operation,
            Mode = m.Mode, Schedule = m.Schedule, Units = m.Units, DefaultStrength = m.DefaultStrength, ContentSha256 = m.ContentSha256,
            MetadataJson = System.Text.Json.JsonSerializer.Serialize(m, SteeringPack.Json),
        };
        info.Sites.AddRange(pack.Terms.Select(t => t.Site.HookName).Distinct());
        info.RecommendedRange.AddRange(m.RecommendedRange);
        info.Versions.AddRange(catalog.Packs.Versions(pack.Name).Select(v => v.Metadata.ContentSha256));
        return info;
    }
}
