using System.Threading.Channels;
using FeatureFlow.Engine;

namespace FeatureFlow.Server;

/// <summary>Several rows of one request (Compare arms, OpenAI choices) streamed through one writer.</summary>
public static class RowStreams
{
    /// <summary>
    /// Reads every row at once and writes each update, mapped by <paramref name="map"/> on its row's reader, in the
    /// order they arrive: a transport's stream takes one writer at a time. A row whose reading throws an error that
    /// <paramref name="rowFailed"/> handles (returns true for) ends there while the others go on; any other error
    /// ends the whole stream once the rows are read.
    /// </summary>
    public static async Task InterleaveAsync<T>(IReadOnlyList<Generation> rows, Func<int, GenerationUpdate, T> map,
        Func<T, Task> write, CancellationToken ct, Func<int, Exception, bool>? rowFailed = null)
    {
        var messages = Channel.CreateUnbounded<T>(new UnboundedChannelOptions { SingleReader = true });
        var readers = rows.Select((row, index) => Task.Run(async () =>
        {
            try
            {
                await foreach (var update in row.ReadAllAsync(ct).ConfigureAwait(false))
                    messages.Writer.TryWrite(map(index, update));
            }
            catch (Exception e) when (rowFailed?.Invoke(index, e) == true)
            {
            }
        }, ct)).ToArray();
        var all = Task.WhenAll(readers);
        _ = all.ContinueWith(t => messages.Writer.TryComplete(t.Exception?.InnerException), TaskScheduler.Default);
        await foreach (var message in messages.Reader.ReadAllAsync(ct).ConfigureAwait(false))
            await write(message).ConfigureAwait(false);
        await all.ConfigureAwait(false);
    }
}
