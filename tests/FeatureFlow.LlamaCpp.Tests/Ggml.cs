using System.Reflection;
using System.Runtime.InteropServices;

namespace FeatureFlow.LlamaCpp.Tests;

/// <summary>
/// llama.cpp's own GGUF reader and writer (ggml's gguf API in libggml-base, shipped with LLamaSharp.Backend.Cpu),
/// so that control-vector files are parsed and hand-made by llama.cpp's code, not by the code under test.
/// </summary>
internal static unsafe partial class Ggml
{
    private const string Library = "ggml-base";
    private const int TypeF32 = 0;

    static Ggml() => NativeLibrary.SetDllImportResolver(typeof(Ggml).Assembly, Resolve);

    /// <summary>
    /// The libggml-base that LLamaSharp already loaded for libllama: it picks one of several CPU builds (avx, avx2,
    /// avx512) from a folder .NET's probing does not search, and both must be the same library in the process.
    /// </summary>
    private static IntPtr Resolve(string name, Assembly assembly, DllImportSearchPath? searchPath)
    {
        if (name != Library) return IntPtr.Zero;
        var loaded = File.ReadLines("/proc/self/maps")
            .Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries))
            .Where(f => f.Length >= 6).Select(f => f[5])
            .FirstOrDefault(p => p.EndsWith("/libggml-base.so", StringComparison.Ordinal));
        return loaded is null
            ? throw new InvalidOperationException("libggml-base.so is not loaded: load a model with LLamaSharp first")
            : NativeLibrary.Load(loaded);
    }

    /// <summary>
    /// Reads a control vector the way llama.cpp's common loader does: every tensor must be a 1-D F32
    /// <c>direction.K</c> with K ≥ 1, and direction.K fills slot K−1 of the buffer that
    /// <c>llama_set_adapter_cvec</c> takes (it starts at layer 1).
    /// </summary>
    public static float[] ReadControlVector(string path, int nEmbd)
    {
        IntPtr tensors = IntPtr.Zero;
        var gguf = gguf_init_from_file(path, new GgufInitParams { NoAlloc = 0, Ctx = &tensors });
        if (gguf == IntPtr.Zero) throw new InvalidDataException($"llama.cpp cannot read {path} as GGUF");
        try
        {
            var buffer = new List<float>();
            for (long i = 0; i < gguf_get_n_tensors(gguf); i++)
            {
                var name = Marshal.PtrToStringUTF8(gguf_get_tensor_name(gguf, i))!;
                if (!name.StartsWith("direction.", StringComparison.Ordinal)
                    || !int.TryParse(name["direction.".Length..], out var k) || k < 1)
                    throw new InvalidDataException($"llama.cpp refuses tensor '{name}' in a control vector");
                var tensor = ggml_get_tensor(tensors, name);
                if (gguf_get_tensor_type(gguf, i) != TypeF32 || ggml_n_dims(tensor) != 1
                    || ggml_nelements(tensor) != nEmbd)
                    throw new InvalidDataException($"'{name}' is not a 1-D F32 vector of {nEmbd} values");
                while (buffer.Count < k * nEmbd) buffer.Add(0f);
                var data = new ReadOnlySpan<float>((void*)ggml_get_data(tensor), nEmbd);
                for (var j = 0; j < nEmbd; j++) buffer[(k - 1) * nEmbd + j] += data[j];
            }
            return [.. buffer];
        }
        finally
        {
            gguf_free(gguf);
            ggml_free(tensors);
        }
    }

    /// <summary>Writes a control vector with llama.cpp's GGUF writer: one direction.K per entry.</summary>
    public static void WriteControlVector(string path, IReadOnlyDictionary<int, float[]> directions)
    {
        var size = (nuint)directions.Sum(d => d.Value.Length * sizeof(float) + 1024);
        var tensors = ggml_init(new GgmlInitParams { MemSize = size, MemBuffer = IntPtr.Zero, NoAlloc = 0 });
        var gguf = gguf_init_empty();
        try
        {
            gguf_set_val_str(gguf, "general.architecture", "controlvector");
            foreach (var (k, v) in directions)
            {
                var tensor = ggml_new_tensor_1d(tensors, TypeF32, v.Length);
                ggml_set_name(tensor, $"direction.{k}");
                v.CopyTo(new Span<float>((void*)ggml_get_data(tensor), v.Length));
                gguf_add_tensor(gguf, tensor);
            }
            if (gguf_write_to_file(gguf, path, 0) == 0) throw new IOException($"llama.cpp could not write {path}");
        }
        finally
        {
            gguf_free(gguf);
            ggml_free(tensors);
        }
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct GgufInitParams
    {
        public byte NoAlloc;
        public IntPtr* Ctx;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct GgmlInitParams
    {
        public nuint MemSize;
        public IntPtr MemBuffer;
        public byte NoAlloc;
    }

    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)]
    private static partial IntPtr gguf_init_from_file(string fname, GgufInitParams parameters);

    [LibraryImport(Library)]
    private static partial IntPtr gguf_init_empty();

    [LibraryImport(Library)]
    private static partial void gguf_free(IntPtr ctx);

    [LibraryImport(Library)]
    private static partial long gguf_get_n_tensors(IntPtr ctx);

    [LibraryImport(Library)]
    private static partial IntPtr gguf_get_tensor_name(IntPtr ctx, long id);

    [LibraryImport(Library)]
    private static partial int gguf_get_tensor_type(IntPtr ctx, long id);

    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)]
    private static partial void gguf_set_val_str(IntPtr ctx, string key, string value);

    [LibraryImport(Library)]
    private static partial void gguf_add_tensor(IntPtr ctx, IntPtr tensor);

    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)]
    private static partial byte gguf_write_to_file(IntPtr ctx, string fname, byte onlyMeta);

    [LibraryImport(Library)]
    private static partial IntPtr ggml_init(GgmlInitParams parameters);

    [LibraryImport(Library)]
    private static partial void ggml_free(IntPtr ctx);

    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)]
    private static partial IntPtr ggml_get_tensor(IntPtr ctx, string name);

    [LibraryImport(Library)]
    private static partial IntPtr ggml_new_tensor_1d(IntPtr ctx, int type, long ne0);

    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)]
    private static partial IntPtr ggml_set_name(IntPtr tensor, string name);

    [LibraryImport(Library)]
    private static partial IntPtr ggml_get_data(IntPtr tensor);

    [LibraryImport(Library)]
    private static partial int ggml_n_dims(IntPtr tensor);

    [LibraryImport(Library)]
    private static partial long ggml_nelements(IntPtr tensor);
}
