// Multi-level RoIAlign: the sampling math shared by the CUDA kernel and the CPU reference.
//
// Everything here compiles as host code with g++ (the CPU reference) and as host + device code
// with nvcc (the CUDA kernel), so both paths run the same arithmetic. The semantics are those of
// torchvision.ops.roi_align (average pooling, bilinear sampling, `aligned` half-pixel offset, adaptive
// sampling ratio when sampling_ratio == 0), applied on the FPN level picked per ROI by Eq. 6 of
// the MaskFace paper:
//
//   s = sqrt(max(w * h, 0)),  k = floor(k0 + log2(s / canonical_size + 1e-6)),  k in [min_level, max_level]
//
// computed in float32. The ROI is pooled from feature map index (k - min_level).
#ifndef MASKFACE_PLUGINS_MLRA_MATH_H
#define MASKFACE_PLUGINS_MLRA_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define MLRA_HD __host__ __device__ __forceinline__
#else
#define MLRA_HD inline
#endif

namespace mlra
{

//! Most feature maps one call can take (levels min_level..max_level).
constexpr int kMaxLevels = 8;
//! Largest output_size accepted (the kernel has no per-size limit; this only catches garbage attributes).
constexpr int kMaxOutputSize = 1024;
//! Most bilinear samples per bin axis. sampling_ratio must not exceed it, and the adaptive grid of
//! sampling_ratio == 0, ceil(roi_side / output_size) in torchvision (unbounded: a 1e30-pixel ROI would
//! loop ~1e57 times and overflow int), is clamped to it. Exact (torchvision's value) for every ROI whose
//! side on its level is at most 64 * output_size feature pixels: 896 px at output_size 14, i.e. 57,344
//! input pixels on level 6 (stride 64) - far beyond any image the engines accept (max_size <= 4096).
constexpr int kMaxSamplesPerAxis = 64;

//! Status codes of the C entry points (mlra_api.h). Positive values are cudaError_t codes.
enum Status : int
{
    kOk = 0,
    kErrNullPointer = -1,
    kErrNumLevels = -2,
    kErrLevelRange = -3,
    kErrOutputSize = -4,
    kErrSamplingRatio = -5,
    kErrCanonicalSize = -6,
    kErrSpatialScale = -7,
    kErrShape = -8,
    kErrDtype = -9,
    kErrAligned = -10,
};

enum DType : int
{
    kFloat32 = 0,
    kFloat16 = 1,
};

//! Pooling attributes, resolved (spatial scales filled in).
struct Params
{
    int output_size;
    int sampling_ratio;
    int canonical_level;
    float canonical_size;
    int min_level;
    int max_level;
    int aligned;
    int num_levels;
    float spatial_scales[kMaxLevels];
};

//! Validate the attributes and fill `out`. spatial_scales may be null: then scale(level) = 2^-level.
inline int make_params(Params* out, int num_levels, int output_size, int sampling_ratio, int canonical_level,
    float canonical_size, int min_level, int max_level, int aligned, float const* spatial_scales)
{
    if (out == nullptr)
    {
        return kErrNullPointer;
    }
    if (min_level < 0 || max_level < min_level || max_level > 62)
    {
        return kErrLevelRange;
    }
    if (num_levels != max_level - min_level + 1 || num_levels < 1 || num_levels > kMaxLevels)
    {
        return kErrNumLevels;
    }
    if (output_size < 1 || output_size > kMaxOutputSize)
    {
        return kErrOutputSize;
    }
    if (sampling_ratio < 0 || sampling_ratio > kMaxSamplesPerAxis)
    {
        return kErrSamplingRatio;
    }
    if (!(canonical_size > 0.0f) || isinf(canonical_size))
    {
        return kErrCanonicalSize;
    }
    if (aligned != 0 && aligned != 1)
    {
        return kErrAligned;
    }
    out->output_size = output_size;
    out->sampling_ratio = sampling_ratio;
    out->canonical_level = canonical_level;
    out->canonical_size = canonical_size;
    out->min_level = min_level;
    out->max_level = max_level;
    out->aligned = aligned;
    out->num_levels = num_levels;
    for (int i = 0; i < kMaxLevels; ++i)
    {
        out->spatial_scales[i] = 0.0f;
    }
    for (int i = 0; i < num_levels; ++i)
    {
        float const s = spatial_scales != nullptr ? spatial_scales[i] : ldexpf(1.0f, -(min_level + i));
        if (!(s > 0.0f) || isinf(s))
        {
            return kErrSpatialScale;
        }
        out->spatial_scales[i] = s;
    }
    return kOk;
}

//! Text of a negative Status (host only; positive codes are CUDA errors).
inline char const* status_text(int status)
{
    switch (status)
    {
    case kOk: return "ok";
    case kErrNullPointer: return "null pointer argument";
    case kErrNumLevels: return "number of feature maps must equal max_level - min_level + 1 (1..8)";
    case kErrLevelRange: return "invalid level range (need 0 <= min_level <= max_level <= 62)";
    case kErrOutputSize: return "output_size must be in [1, 1024]";
    case kErrSamplingRatio: return "sampling_ratio must be in [0, 64] (0 = adaptive, clamped to 64)";
    case kErrCanonicalSize: return "canonical_size must be a finite positive number";
    case kErrSpatialScale: return "spatial scales must be finite positive numbers";
    case kErrShape: return "invalid tensor shape";
    case kErrDtype: return "dtype must be 0 (float32) or 1 (float16)";
    case kErrAligned: return "aligned must be 0 or 1";
    default: break;
    }
    return "unknown status";
}

//! Eq. 6: the FPN level (min_level..max_level) of the box (x1, y1, x2, y2) in input pixels, in float32.
//! NaN boxes go to min_level.
MLRA_HD int assign_level(
    float x1, float y1, float x2, float y2, int canonical_level, float canonical_size, int min_level, int max_level)
{
    float const area = (x2 - x1) * (y2 - y1);
    float const s = sqrtf(area > 0.0f ? area : 0.0f);
    float const k = floorf(static_cast<float>(canonical_level) + log2f(s / canonical_size + 1e-6f));
    if (!(k >= static_cast<float>(min_level)))
    {
        return min_level;
    }
    if (!(k <= static_cast<float>(max_level)))
    {
        return max_level;
    }
    return static_cast<int>(k);
}

//! Where one ROI samples: level, batch and the bin grid on that level's map (torchvision's roi_align).
struct RoiGeometry
{
    int batch;       //!< batch index; -1 (the ROI pools zeros) when out of [0, batch_size), NaN, or when a
                     //!< coordinate is NaN / inf

    int level_index; //!< feature map index: level - min_level
    float start_x;
    float start_y;
    float bin_w;
    float bin_h;
    int grid_w;
    int grid_h;
    float count; //!< number of samples averaged in a bin (at least 1)
};

//! Adaptive samples per axis for sampling_ratio == 0: ceil(roi_side / output_size) as in torchvision,
//! clamped to [0, kMaxSamplesPerAxis] before the float -> int conversion (inf would be UB). A negative
//! side (inverted ROI, aligned mode) gives 0 samples: the bin is 0, as torchvision's empty loop gives.
MLRA_HD int adaptive_samples(float roi_side, float pooled)
{
    float const n = ceilf(roi_side / pooled);
    if (!(n > 0.0f)) // also NaN
    {
        return 0;
    }
    return n < static_cast<float>(kMaxSamplesPerAxis) ? static_cast<int>(n) : kMaxSamplesPerAxis;
}

//! roi: (batch index, x1, y1, x2, y2) in input pixels.
MLRA_HD RoiGeometry roi_geometry(float const* roi, Params const& p, int batch_size)
{
    RoiGeometry g;
    float const b = roi[0];
    // torchvision truncates the float batch index to int; indices outside the batch pool zeros here. The
    // comparisons are false for NaN, so a NaN index is -1 before any float -> int conversion. A ROI with a
    // NaN / inf coordinate also pools zeros (torchvision would sample garbage or hit UB there).
    bool const finite = isfinite(roi[1]) && isfinite(roi[2]) && isfinite(roi[3]) && isfinite(roi[4]);
    g.batch = (finite && b >= 0.0f && b < static_cast<float>(batch_size)) ? static_cast<int>(b) : -1;
    int const level
        = assign_level(roi[1], roi[2], roi[3], roi[4], p.canonical_level, p.canonical_size, p.min_level, p.max_level);
    g.level_index = level - p.min_level;
    float const scale = p.spatial_scales[g.level_index];
    float const offset = p.aligned ? 0.5f : 0.0f;
    g.start_x = roi[1] * scale - offset;
    g.start_y = roi[2] * scale - offset;
    float const end_x = roi[3] * scale - offset;
    float const end_y = roi[4] * scale - offset;
    float roi_w = end_x - g.start_x;
    float roi_h = end_y - g.start_y;
    if (!p.aligned)
    {
        // Legacy (non-aligned) mode forces malformed ROIs to 1x1.
        roi_w = roi_w > 1.0f ? roi_w : 1.0f;
        roi_h = roi_h > 1.0f ? roi_h : 1.0f;
    }
    float const pooled = static_cast<float>(p.output_size);
    g.bin_w = roi_w / pooled;
    g.bin_h = roi_h / pooled;
    g.grid_w = p.sampling_ratio > 0 ? p.sampling_ratio : adaptive_samples(roi_w, pooled);
    g.grid_h = p.sampling_ratio > 0 ? p.sampling_ratio : adaptive_samples(roi_h, pooled);
    int const n = g.grid_w * g.grid_h;
    g.count = static_cast<float>(n > 1 ? n : 1);
    return g;
}

//! Bilinear sample at (y, x) of one [height, width] plane, read through `load(flat_index) -> float`.
//! torchvision's boundary rules: outside [-1, size] contributes 0, clamp to 0 below, clamp at size - 1 above.
//! Written as "not inside" so that a NaN position (0 * inf bins of a huge ROI) also contributes 0 and never
//! reaches the float -> int conversion below.
template <typename Load>
MLRA_HD float bilinear(Load const& load, int height, int width, float y, float x)
{
    if (!(y >= -1.0f && y <= static_cast<float>(height) && x >= -1.0f && x <= static_cast<float>(width)))
    {
        return 0.0f;
    }
    if (y <= 0.0f)
    {
        y = 0.0f;
    }
    if (x <= 0.0f)
    {
        x = 0.0f;
    }
    int y_low = static_cast<int>(y);
    int x_low = static_cast<int>(x);
    int y_high;
    int x_high;
    if (y_low >= height - 1)
    {
        y_high = y_low = height - 1;
        y = static_cast<float>(y_low);
    }
    else
    {
        y_high = y_low + 1;
    }
    if (x_low >= width - 1)
    {
        x_high = x_low = width - 1;
        x = static_cast<float>(x_low);
    }
    else
    {
        x_high = x_low + 1;
    }
    float const ly = y - static_cast<float>(y_low);
    float const lx = x - static_cast<float>(x_low);
    float const hy = 1.0f - ly;
    float const hx = 1.0f - lx;
    float const w1 = hy * hx;
    float const w2 = hy * lx;
    float const w3 = ly * hx;
    float const w4 = ly * lx;
    int64_t const row_low = static_cast<int64_t>(y_low) * width;
    int64_t const row_high = static_cast<int64_t>(y_high) * width;
    float const v1 = load(row_low + x_low);
    float const v2 = load(row_low + x_high);
    float const v3 = load(row_high + x_low);
    float const v4 = load(row_high + x_high);
    return w1 * v1 + w2 * v2 + w3 * v3 + w4 * v4;
}

//! Average of the grid_h x grid_w bilinear samples of output bin (ph, pw) of one channel plane.
template <typename Load>
MLRA_HD float pool_bin(Load const& load, int height, int width, RoiGeometry const& g, int ph, int pw)
{
    if (height <= 0 || width <= 0)
    {
        return 0.0f;
    }
    float sum = 0.0f;
    for (int iy = 0; iy < g.grid_h; ++iy)
    {
        float const y = g.start_y + static_cast<float>(ph) * g.bin_h
            + (static_cast<float>(iy) + 0.5f) * g.bin_h / static_cast<float>(g.grid_h);
        for (int ix = 0; ix < g.grid_w; ++ix)
        {
            float const x = g.start_x + static_cast<float>(pw) * g.bin_w
                + (static_cast<float>(ix) + 0.5f) * g.bin_w / static_cast<float>(g.grid_w);
            sum += bilinear(load, height, width, y, x);
        }
    }
    return sum / g.count;
}

//! Reads a float32 plane.
struct LoadFloat
{
    float const* data;
    MLRA_HD float operator()(int64_t i) const
    {
        return data[i];
    }
};

//! IEEE binary16 bits -> float32 (exact).
MLRA_HD float half_bits_to_float(uint16_t h)
{
    uint32_t const sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t const exponent = (h >> 10) & 0x1fu;
    uint32_t const mantissa = h & 0x3ffu;
    uint32_t bits;
    if (exponent == 0)
    {
        if (mantissa == 0)
        {
            bits = sign;
        }
        else
        {
            float const v = static_cast<float>(mantissa) * 5.9604644775390625e-08f; // mantissa * 2^-24, exact
            return sign ? -v : v;
        }
    }
    else if (exponent == 31)
    {
        bits = sign | 0x7f800000u | (mantissa << 13);
    }
    else
    {
        bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof(f));
    return f;
}

//! float32 -> IEEE binary16 bits, round to nearest even (what numpy's astype(float16) and __float2half do).
MLRA_HD uint16_t float_to_half_bits(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof(x));
    uint32_t const sign = (x >> 16) & 0x8000u;
    uint32_t const ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) // inf, nan (keep nan quiet)
    {
        return static_cast<uint16_t>(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u));
    }
    if (ax >= 0x477ff000u) // >= 65520: rounds to inf
    {
        return static_cast<uint16_t>(sign | 0x7c00u);
    }
    if (ax < 0x38800000u) // below 2^-14: half subnormal (or zero)
    {
        if (ax < 0x33000000u) // <= 2^-25 rounds to zero
        {
            return static_cast<uint16_t>(sign);
        }
        uint32_t const mant = (ax & 0x7fffffu) | 0x800000u;
        int const shift = 126 - static_cast<int>(ax >> 23); // 14..24
        uint32_t r = mant >> shift;
        uint32_t const rem = mant & ((1u << shift) - 1u);
        uint32_t const halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (r & 1u)))
        {
            ++r;
        }
        return static_cast<uint16_t>(sign | r);
    }
    uint32_t r = (ax - 0x38000000u) >> 13; // rebias exponent 127 -> 15
    uint32_t const rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u)))
    {
        ++r; // a carry into the exponent is the correct rounding (up to 0x7c00 = inf)
    }
    return static_cast<uint16_t>(sign | r);
}

//! Reads a float16 plane given as raw bits (host side; the kernel uses __half loads).
struct LoadHalfBits
{
    uint16_t const* data;
    MLRA_HD float operator()(int64_t i) const
    {
        return half_bits_to_float(data[i]);
    }
};

} // namespace mlra

#endif // MASKFACE_PLUGINS_MLRA_MATH_H
