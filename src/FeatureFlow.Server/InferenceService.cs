using FeatureFlow.Api.V1;
using FeatureFlow.Engine;
using FeatureFlow.Steering;
using FeatureFlow.Steering.Packs;
using Grpc.Core;

namespace FeatureFlow.Server;

public sealed class InferenceService(GenerationEngine engine, SteeringCatalog catalog, ILogger<InferenceService> logger) : Inference.InferenceBase
{
    public override async Task Generate(GenerateRequest request, IServerStreamWriter<GenerateResponse> responseStream, ServerCallContext context)
    {
        var ct = context.CancellationToken;
        IAsyncEnumerator<GenerationUpdate> updates;
        try
        {
            updates = engine.GenerateAsync(RequestMapper.ToDomain(request, engine, catalog), ct).GetAsyncEnumerator(ct);
            // The first MoveNext validates the request, so bad input fails before anything is streamed.
            if (!await updates.MoveNextAsync()) return;
        }
        catch (FieldValidationException e)
        {
            throw new RpcException(new Status(StatusCode.InvalidArgument, e.Message));
        }

        await using (updates)
        {
            do
            {
                if (ct.IsCancellationRequested) break;
                await responseStream.WriteAsync(RequestMapper.ToApi(updates.Current), ct);
            } while (await updates.MoveNextAsync());
        }
        logger.LogDebug("Generate finished (cancelled: {Cancelled})", ct.IsCancellationRequested);
    }

    public override Task<ModelInfo> GetModelInfo(GetModelInfoRequest request, ServerCallContext context)
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
            SlotsPerSite = engine.Decoder.SteeringShape!.SlotsPerSite,
            ExecutionProvider = engine.Decoder.Provider.Name,
            ExecutionProviderReason = engine.Decoder.Provider.Reason,
        };
        info.Sites.AddRange(m.Steering.Sites);
        return Task.FromResult(info);
    }

    public override Task<ListPacksResponse> ListPacks(ListPacksRequest request, ServerCallContext context)
    {
        var response = new ListPacksResponse();
        foreach (var pack in catalog.Packs.Packs.OrderBy(p => p.Name, StringComparer.Ordinal))
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
            response.Packs.Add(info);
        }
        response.Refused.AddRange(catalog.Packs.Errors.Select(e => new RefusedPack { Path = e.Path, Reason = e.Message }));
        return Task.FromResult(response);
    }
}
