// Plain C entry points of libmaskface_mlra.so / libmaskface_plugins.so (used by ctypes and by the plugin).
//
// Layout: features[l] is a contiguous NCHW tensor [batch, channels, heights[l], widths[l]] of `dtype`
// (0 = float32, 1 = float16); rois is float32 [num_rois, 5] = (batch index, x1, y1, x2, y2) in input pixels;
// output is [num_rois, channels, output_size, output_size] of `dtype`. Samples are accumulated in float32.
// num_levels must equal max_level - min_level + 1; spatial_scales may be NULL (then 2^-level).
// Every function returns 0 on success, a negative mlra::Status for bad arguments, or a positive cudaError_t.
#ifndef MASKFACE_PLUGINS_MLRA_API_H
#define MASKFACE_PLUGINS_MLRA_API_H

#include <stdint.h>

#if defined(_WIN32)
#define MLRA_API __declspec(dllexport)
#else
#define MLRA_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

//! Version of this C interface; bump when a signature changes.
MLRA_API int mlra_abi_version(void);

//! Human-readable text of a status code returned by the functions below.
MLRA_API char const* mlra_status_string(int status);

//! CPU reference (host pointers).
MLRA_API int mlra_forward_cpu(void const* const* features, int const* heights, int const* widths, int num_levels,
    int batch, int channels, float const* rois, int num_rois, void* output, int dtype, int output_size,
    int sampling_ratio, int canonical_level, float canonical_size, int min_level, int max_level, int aligned,
    float const* spatial_scales);

//! Eq. 6 level (min_level..max_level) of each ROI [num_rois, 5] on the host; writes levels[num_rois].
MLRA_API int mlra_assign_levels_cpu(float const* rois, int num_rois, int canonical_level, float canonical_size,
    int min_level, int max_level, int32_t* levels);

//! float32 <-> float16 bit conversions of the shared header (exposed for tests).
MLRA_API void mlra_float_to_half_cpu(float const* in, uint16_t* out, int64_t n);
MLRA_API void mlra_half_to_float_cpu(uint16_t const* in, float* out, int64_t n);

//! CUDA kernel. `features` is a HOST array of DEVICE pointers; rois and output are device pointers;
//! stream is a cudaStream_t (NULL = legacy default stream). Asynchronous: returns after the launch.
//! num_rois == 0 is a no-op.
MLRA_API int mlra_forward_cuda(void const* const* features, int const* heights, int const* widths, int num_levels,
    int batch, int channels, float const* rois, int num_rois, void* output, int dtype, int output_size,
    int sampling_ratio, int canonical_level, float canonical_size, int min_level, int max_level, int aligned,
    float const* spatial_scales, void* stream);

//! Eq. 6 level of each ROI on the device (rois, levels are device pointers); for host/device parity checks.
MLRA_API int mlra_assign_levels_cuda(float const* rois, int num_rois, int canonical_level, float canonical_size,
    int min_level, int max_level, int32_t* levels, void* stream);

//! Number of CUDA devices the runtime sees (0 without a GPU or driver; never fails).
MLRA_API int mlra_cuda_device_count(void);

#ifdef __cplusplus
}
#endif

#endif // MASKFACE_PLUGINS_MLRA_API_H
