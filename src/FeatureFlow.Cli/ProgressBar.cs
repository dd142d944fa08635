using System.Diagnostics;

namespace FeatureFlow.Cli;

/// <summary>
/// Progress for long jobs on stderr: a redrawn bar on a terminal, otherwise a line every 10%
/// (so logs of CI and redirected runs stay readable).
/// </summary>
public sealed class ProgressBar(TextWriter writer, string label, string unit)
{
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private readonly bool _interactive = ReferenceEquals(writer, Console.Error) && !Console.IsErrorRedirected;
    private long _lastDraw = -1000;
    private int _lastDecile = -1;

    public void Report(long done, long total)
    {
        var fraction = total == 0 ? 1.0 : Math.Clamp((double)done / total, 0, 1);
        var elapsed = _clock.Elapsed.TotalSeconds;
        var eta = fraction > 0 ? elapsed / fraction - elapsed : 0;
        var text = $"{label} {fraction,5:P0} {done:N0}/{total:N0} {unit} {elapsed:F0}s elapsed, ~{eta:F0}s left";
        if (_interactive)
        {
            if (_clock.ElapsedMilliseconds - _lastDraw < 200 && done < total) return;
            _lastDraw = _clock.ElapsedMilliseconds;
            const int width = 30;
            var filled = (int)(fraction * width);
            writer.Write($"\r[{new string('#', filled)}{new string('.', width - filled)}] {text}   ");
            if (done >= total) writer.WriteLine();
        }
        else
        {
            var decile = (int)(fraction * 10);
            if (decile == _lastDecile) return;
            _lastDecile = decile;
            writer.WriteLine(text);
        }
    }
}
