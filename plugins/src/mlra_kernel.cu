// CUDA kernel of the multi-level RoIAlign (float32 and float16 features, float32 accumulation, float32 ROIs).
// One thread per output element (roi, channel, ph, pw); the math is the shared header's.
#include "maskface_plugins/mlra_api.h"
#include "maskface_plugins/mlra_math.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace
{

struct KernelArgs
{
    void const* features[mlra::kMaxLevels];
    int heights[mlra::kMaxLevels];
    int widths[mlra::kMaxLevels];
    int batch;
    int channels;
    float const* rois;
    int64_t total; // num_rois * channels * output_size^2
    void* output;
    mlra::Params params;
};

template <typename T>
struct DeviceLoad;

template <>
struct DeviceLoad<float>
{
    float const* data;
    __device__ __forceinline__ float operator()(int64_t i) const
    {
        return __ldg(data + i);
    }
};

template <>
struct DeviceLoad<__half>
{
    __half const* data;
    __device__ __forceinline__ float operator()(int64_t i) const
    {
        return __half2float(__ldg(data + i));
    }
};

__device__ __forceinline__ void store(float* out, float v)
{
    *out = v;
}

__device__ __forceinline__ void store(__half* out, float v)
{
    *out = __float2half_rn(v);
}

// Index is uint32_t when the output has < 2^32 elements (cheaper div/mod), else uint64_t.
template <typename T, typename Index>
__global__ void __launch_bounds__(256) mlra_forward_kernel(KernelArgs const args)
{
    Index const P = static_cast<Index>(args.params.output_size);
    Index const C = static_cast<Index>(args.channels);
    Index const total = static_cast<Index>(args.total);
    Index const stride = static_cast<Index>(blockDim.x) * gridDim.x;
    for (Index idx = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride)
    {
        int const pw = static_cast<int>(idx % P);
        Index rest = idx / P;
        int const ph = static_cast<int>(rest % P);
        rest /= P;
        int const c = static_cast<int>(rest % C);
        int64_t const n = static_cast<int64_t>(rest / C);

        mlra::RoiGeometry const g = mlra::roi_geometry(args.rois + n * 5, args.params, args.batch);
        float value = 0.0f;
        if (g.batch >= 0)
        {
            int const H = args.heights[g.level_index];
            int const W = args.widths[g.level_index];
            T const* level = static_cast<T const*>(args.features[g.level_index]);
            DeviceLoad<T> const load{level + (static_cast<int64_t>(g.batch) * C + c) * H * W};
            value = mlra::pool_bin(load, H, W, g, ph, pw);
        }
        store(static_cast<T*>(args.output) + idx, value);
    }
}

__global__ void mlra_levels_kernel(float const* rois, int num_rois, int canonical_level, float canonical_size,
    int min_level, int max_level, int32_t* levels)
{
    int const n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n < num_rois)
    {
        float const* r = rois + static_cast<int64_t>(n) * 5;
        levels[n] = mlra::assign_level(r[1], r[2], r[3], r[4], canonical_level, canonical_size, min_level, max_level);
    }
}

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;

} // namespace

extern "C" {

int mlra_forward_cuda(void const* const* features, int const* heights, int const* widths, int num_levels, int batch,
    int channels, float const* rois, int num_rois, void* output, int dtype, int output_size, int sampling_ratio,
    int canonical_level, float canonical_size, int min_level, int max_level, int aligned,
    float const* spatial_scales, void* stream)
{
    KernelArgs args;
    int const status = mlra::make_params(&args.params, num_levels, output_size, sampling_ratio, canonical_level,
        canonical_size, min_level, max_level, aligned, spatial_scales);
    if (status != mlra::kOk)
    {
        return status;
    }
    if (num_rois < 0 || batch < 0 || channels < 0)
    {
        return mlra::kErrShape;
    }
    if (dtype != mlra::kFloat32 && dtype != mlra::kFloat16)
    {
        return mlra::kErrDtype;
    }
    args.total = static_cast<int64_t>(num_rois) * channels * output_size * output_size;
    if (args.total == 0)
    {
        return mlra::kOk; // zero ROIs (or channels): nothing to write, nothing to launch
    }
    if (features == nullptr || heights == nullptr || widths == nullptr || rois == nullptr || output == nullptr)
    {
        return mlra::kErrNullPointer;
    }
    for (int l = 0; l < mlra::kMaxLevels; ++l)
    {
        bool const used = l < num_levels;
        args.features[l] = used ? features[l] : nullptr;
        args.heights[l] = used ? heights[l] : 0;
        args.widths[l] = used ? widths[l] : 0;
        if (used && (heights[l] < 0 || widths[l] < 0))
        {
            return mlra::kErrShape;
        }
        if (used && batch > 0 && features[l] == nullptr)
        {
            return mlra::kErrNullPointer;
        }
    }
    args.batch = batch;
    args.channels = channels;
    args.rois = rois;
    args.output = output;

    int64_t blocks = (args.total + kThreads - 1) / kThreads;
    blocks = blocks < kMaxBlocks ? blocks : kMaxBlocks;
    cudaStream_t const s = static_cast<cudaStream_t>(stream);
    // Grid-stride loop: idx + stride must not wrap, so the 32-bit path keeps a margin below 2^32.
    bool const small = args.total + blocks * kThreads < (int64_t{1} << 32);
    dim3 const grid(static_cast<unsigned>(blocks));
    if (dtype == mlra::kFloat32)
    {
        if (small)
        {
            mlra_forward_kernel<float, uint32_t><<<grid, kThreads, 0, s>>>(args);
        }
        else
        {
            mlra_forward_kernel<float, uint64_t><<<grid, kThreads, 0, s>>>(args);
        }
    }
    else
    {
        if (small)
        {
            mlra_forward_kernel<__half, uint32_t><<<grid, kThreads, 0, s>>>(args);
        }
        else
        {
            mlra_forward_kernel<__half, uint64_t><<<grid, kThreads, 0, s>>>(args);
        }
    }
    return static_cast<int>(cudaGetLastError());
}

int mlra_assign_levels_cuda(float const* rois, int num_rois, int canonical_level, float canonical_size,
    int min_level, int max_level, int32_t* levels, void* stream)
{
    if (num_rois < 0)
    {
        return mlra::kErrShape;
    }
    if (min_level > max_level)
    {
        return mlra::kErrLevelRange;
    }
    if (num_rois == 0)
    {
        return mlra::kOk;
    }
    if (rois == nullptr || levels == nullptr)
    {
        return mlra::kErrNullPointer;
    }
    int const blocks = (num_rois + kThreads - 1) / kThreads;
    mlra_levels_kernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        rois, num_rois, canonical_level, canonical_size, min_level, max_level, levels);
    return static_cast<int>(cudaGetLastError());
}

int mlra_cuda_device_count(void)
{
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess)
    {
        cudaGetLastError(); // clear the sticky-free error so later calls start clean
        return 0;
    }
    return count;
}

char const* mlra_status_string(int status)
{
    if (status > 0)
    {
        return cudaGetErrorString(static_cast<cudaError_t>(status));
    }
    return mlra::status_text(status);
}

} // extern "C"
