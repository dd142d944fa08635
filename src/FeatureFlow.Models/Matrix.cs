namespace FeatureFlow.Models;

public static class Matrix
{
    /// <summary>The transpose of a row-major [rows, cols] matrix, as a new row-major [cols, rows] array.</summary>
    public static float[] Transpose(ReadOnlySpan<float> m, int rows, int cols)
    {
        if (m.Length != rows * cols) throw new ArgumentException($"{m.Length} values are not a [{rows}, {cols}] matrix");
        var t = new float[m.Length];
        for (var r = 0; r < rows; r++)
            for (var c = 0; c < cols; c++) t[c * rows + r] = m[r * cols + c];
        return t;
    }
}
