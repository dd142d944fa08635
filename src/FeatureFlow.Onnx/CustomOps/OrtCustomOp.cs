using System.Runtime.InteropServices;

namespace FeatureFlow.Onnx.CustomOps;

/// <summary>
/// <c>struct OrtCustomOp</c> of onnxruntime_c_api.h (1.31.0): a custom operator's schema and kernel callbacks, 208
/// bytes on 64-bit. Function pointers are kept as untyped addresses; the comments give each one's C signature.
/// </summary>
/// <remarks>
/// <see cref="Version"/> tells ONNX Runtime which members exist: from 8 it reads the input/output characteristics,
/// from 13 the input memory types, from 16 CreateKernelV2/KernelComputeV2 (which return an OrtStatus, so a kernel
/// can fail cleanly) in place of CreateKernel/KernelCompute; from 17 the shape inference and opset-range members
/// (without output shapes ONNX Runtime cannot plan the memory of a node's outputs, nor of the nodes after it, ahead
/// of a run). The variadic-arity members are read only for variadic inputs or outputs, which this
/// project's operators do not have. Everything else stays zero.
/// </remarks>
[StructLayout(LayoutKind.Sequential)]
internal struct OrtCustomOp
{
    public const uint SupportedVersion = 17;

    public uint Version;
    public nint CreateKernel;                  // void* (const OrtCustomOp*, const OrtApi*, const OrtKernelInfo*)
    public nint GetName;                       // const char* (const OrtCustomOp*)
    public nint GetExecutionProviderType;      // const char* (const OrtCustomOp*); null: CPU
    public nint GetInputType;                  // ONNXTensorElementDataType (const OrtCustomOp*, size_t)
    public nint GetInputTypeCount;             // size_t (const OrtCustomOp*)
    public nint GetOutputType;                 // ONNXTensorElementDataType (const OrtCustomOp*, size_t)
    public nint GetOutputTypeCount;            // size_t (const OrtCustomOp*)
    public nint KernelCompute;                 // void (void* kernel, OrtKernelContext*)
    public nint KernelDestroy;                 // void (void* kernel)
    public nint GetInputCharacteristic;        // OrtCustomOpInputOutputCharacteristic (const OrtCustomOp*, size_t)
    public nint GetOutputCharacteristic;       // OrtCustomOpInputOutputCharacteristic (const OrtCustomOp*, size_t)
    public nint GetInputMemoryType;            // OrtMemType (const OrtCustomOp*, size_t)
    public nint GetVariadicInputMinArity;      // int (const OrtCustomOp*)
    public nint GetVariadicInputHomogeneity;   // int (const OrtCustomOp*)
    public nint GetVariadicOutputMinArity;     // int (const OrtCustomOp*)
    public nint GetVariadicOutputHomogeneity;  // int (const OrtCustomOp*)
    public nint CreateKernelV2;                // OrtStatus* (const OrtCustomOp*, const OrtApi*, const OrtKernelInfo*,
                                               //             void** kernel)
    public nint KernelComputeV2;               // OrtStatus* (void* kernel, OrtKernelContext*)
    public nint InferOutputShapeFn;            // OrtStatus* (const OrtCustomOp*, OrtShapeInferContext*)
    public nint GetStartVersion;               // int (const OrtCustomOp*)
    public nint GetEndVersion;                 // int (const OrtCustomOp*)
    public nint GetMayInplace;                 // size_t (int**, int**)
    public nint ReleaseMayInplace;             // void (int*, int*)
    public nint GetAliasMap;                   // size_t (int**, int**)
    public nint ReleaseAliasMap;               // void (int*, int*)

    /// <summary>OrtCustomOpInputOutputCharacteristic.INPUT_OUTPUT_REQUIRED and INPUT_OUTPUT_OPTIONAL.</summary>
    public const int Required = 0, Optional = 1;

    /// <summary>OrtMemType.OrtMemTypeDefault: the execution provider's own memory (CPU here).</summary>
    public const int DefaultMemory = 0;
}
