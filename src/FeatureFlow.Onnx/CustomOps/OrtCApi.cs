using System.Runtime.InteropServices;
using System.Text;
using Microsoft.ML.OnnxRuntime;

namespace FeatureFlow.Onnx.CustomOps;

/// <summary>
/// The few members of ONNX Runtime's C API (<c>OrtApi</c>, a table of function pointers) that a custom operator
/// needs and the managed package does not wrap. The table comes from <c>OrtGetApiBase()->GetApi(version)</c> of the
/// very native library the managed package loaded, so the operators and the sessions share one ONNX Runtime.
/// </summary>
/// <remarks>
/// Member indices are positions in <c>struct OrtApi</c> of onnxruntime_c_api.h (1.31.0), counted from 0; the table
/// only ever grows at its end, so they hold for every later version. Functions called inside a kernel's compute
/// are plain accessors that neither block nor call back into .NET, hence SuppressGCTransition.
/// </remarks>
internal static unsafe class OrtCApi
{
    /// <summary>
    /// The API version asked for: 24 (ONNX Runtime 1.24) added GetTensorElementTypeAndShapeDataReference, the newest
    /// member called here (reading a shape without allocating).
    /// </summary>
    public const uint RequestedVersion = 24;

    private const int CreateStatusIndex = 0;
    private const int GetErrorCodeIndex = 1;
    private const int GetErrorMessageIndex = 2;
    private const int CreateCustomOpDomainIndex = 26;
    private const int CustomOpDomainAddIndex = 27;
    private const int AddCustomOpDomainIndex = 28;
    private const int GetTensorMutableDataIndex = 51;
    private const int KernelInfoGetAttributeFloatIndex = 85;
    private const int KernelInfoGetAttributeInt64Index = 86;
    private const int KernelContextGetInputIndex = 90;
    private const int KernelContextGetOutputIndex = 91;
    private const int ReleaseStatusIndex = 93;
    private const int ShapeInferContextGetInputTypeShapeIndex = 268;
    private const int ShapeInferContextSetOutputTypeShapeIndex = 270;
    private const int GetTensorElementTypeAndShapeDataReferenceIndex = 414;

    /// <summary>OrtErrorCode values (onnxruntime_error_code.h).</summary>
    public const int OrtFail = 1, OrtInvalidArgument = 2;

    /// <summary>ONNXTensorElementDataType of float32.</summary>
    public const int ElementFloat = 1;

    private static readonly void** Table = LoadTable();

    private static void** LoadTable()
    {
        // Resolved exactly as the managed package resolves its own imports, so this is the library it uses.
        var library = NativeLibrary.Load("onnxruntime", typeof(OrtEnv).Assembly, null);
        var getApiBase = (delegate* unmanaged<void**>)NativeLibrary.GetExport(library, "OrtGetApiBase");
        var apiBase = getApiBase();
        // struct OrtApiBase { GetApi(uint32_t version); GetVersionString(void); }
        var getApi = (delegate* unmanaged<uint, void**>)apiBase[0];
        var table = getApi(RequestedVersion);
        if (table is null)
        {
            var version = Marshal.PtrToStringUTF8((nint)((delegate* unmanaged<byte*>)apiBase[1])());
            throw new PlatformNotSupportedException($"ONNX Runtime {version} has no C API version {RequestedVersion} "
                + "(1.24 or later is needed for FeatureFlow's custom operators)");
        }
        return table;
    }

    public static nint CreateStatus(int code, string message)
    {
        var bytes = Encoding.UTF8.GetBytes(message + "\0");
        fixed (byte* text = bytes)
            return (nint)((delegate* unmanaged<int, byte*, void*>)Table[CreateStatusIndex])(code, text);
    }

    /// <summary>Throws on a failed status (releasing it), for calls made outside a kernel.</summary>
    public static void ThrowOnError(nint status, string what)
    {
        if (status == 0) return;
        var message = Marshal.PtrToStringUTF8(
            (nint)((delegate* unmanaged<nint, byte*>)Table[GetErrorMessageIndex])(status));
        var code = ((delegate* unmanaged<nint, int>)Table[GetErrorCodeIndex])(status);
        ReleaseStatus(status);
        throw new InvalidOperationException($"ONNX Runtime {what} failed (error code {code}): {message}");
    }

    public static void ReleaseStatus(nint status) =>
        ((delegate* unmanaged<nint, void>)Table[ReleaseStatusIndex])(status);

    public static nint CreateCustomOpDomain(string domain)
    {
        var bytes = Encoding.UTF8.GetBytes(domain + "\0");
        nint result;
        fixed (byte* name = bytes)
            ThrowOnError(((delegate* unmanaged<byte*, nint*, nint>)Table[CreateCustomOpDomainIndex])(name, &result),
                $"CreateCustomOpDomain({domain})");
        return result;
    }

    public static void CustomOpDomainAdd(nint domain, void* op) =>
        ThrowOnError(((delegate* unmanaged<nint, void*, nint>)Table[CustomOpDomainAddIndex])(domain, op),
            "CustomOpDomain_Add");

    public static void AddCustomOpDomain(nint sessionOptions, nint domain) =>
        ThrowOnError(((delegate* unmanaged<nint, nint, nint>)Table[AddCustomOpDomainIndex])(sessionOptions, domain),
            "AddCustomOpDomain");

    /// <summary>An int attribute of the node a kernel is created for; returns the failed status (0 on success).</summary>
    public static nint KernelInfoGetAttributeInt64(nint info, byte* name, long* value) =>
        ((delegate* unmanaged<nint, byte*, long*, nint>)Table[KernelInfoGetAttributeInt64Index])(info, name, value);

    /// <summary>A float attribute of the node a kernel is created for; returns the failed status (0 on success).</summary>
    public static nint KernelInfoGetAttributeFloat(nint info, byte* name, float* value) =>
        ((delegate* unmanaged<nint, byte*, float*, nint>)Table[KernelInfoGetAttributeFloatIndex])(info, name, value);

    /// <summary>An input's type and shape during shape inference (owned by the context, not released).</summary>
    public static nint ShapeInferContextGetInputTypeShape(nint context, nuint index, nint* info) =>
        ((delegate* unmanaged<nint, nuint, nint*, nint>)Table[ShapeInferContextGetInputTypeShapeIndex])(
            context, index, info);

    public static nint ShapeInferContextSetOutputTypeShape(nint context, nuint index, nint info) =>
        ((delegate* unmanaged<nint, nuint, nint, nint>)Table[ShapeInferContextSetOutputTypeShapeIndex])(
            context, index, info);

    public static nint KernelContextGetInput(nint context, nuint index, nint* value) =>
        ((delegate* unmanaged[SuppressGCTransition]<nint, nuint, nint*, nint>)Table[KernelContextGetInputIndex])(
            context, index, value);

    /// <summary>Allocates output <paramref name="index"/> with the given shape (ONNX Runtime's allocator).</summary>
    public static nint KernelContextGetOutput(nint context, nuint index, long* dims, nuint rank, nint* value) =>
        ((delegate* unmanaged<nint, nuint, long*, nuint, nint*, nint>)Table[KernelContextGetOutputIndex])(
            context, index, dims, rank, value);

    public static nint GetTensorMutableData(nint value, float** data) =>
        ((delegate* unmanaged[SuppressGCTransition]<nint, float**, nint>)Table[GetTensorMutableDataIndex])(value, data);

    /// <summary>A tensor's element type and its own shape array (not copied; valid while the value lives).</summary>
    public static nint GetTensorTypeAndShape(nint value, int* elementType, long** shape, nuint* rank) =>
        ((delegate* unmanaged[SuppressGCTransition]<nint, int*, long**, nuint*, nint>)
            Table[GetTensorElementTypeAndShapeDataReferenceIndex])(value, elementType, shape, rank);
}
