// CPU reference of the multi-level RoIAlign: the same header math as the CUDA kernel, run in plain loops.
#include "maskface_plugins/mlra_api.h"
#include "maskface_plugins/mlra_math.h"

namespace
{

template <typename Load, typename Elem, typename Store>
int forward_cpu(void const* const* features, int const* heights, int const* widths, int batch, int channels,
    float const* rois, int num_rois, Elem* output, mlra::Params const& p, Store store)
{
    int const P = p.output_size;
    int64_t const bin_count = static_cast<int64_t>(P) * P;
    for (int n = 0; n < num_rois; ++n)
    {
        mlra::RoiGeometry const g = mlra::roi_geometry(rois + static_cast<int64_t>(n) * 5, p, batch);
        int const H = heights[g.level_index];
        int const W = widths[g.level_index];
        Elem const* level = static_cast<Elem const*>(features[g.level_index]);
        for (int c = 0; c < channels; ++c)
        {
            Elem* out = output + (static_cast<int64_t>(n) * channels + c) * bin_count;
            if (g.batch < 0)
            {
                for (int64_t i = 0; i < bin_count; ++i)
                {
                    out[i] = store(0.0f);
                }
                continue;
            }
            Load const load{level + (static_cast<int64_t>(g.batch) * channels + c) * H * W};
            for (int ph = 0; ph < P; ++ph)
            {
                for (int pw = 0; pw < P; ++pw)
                {
                    out[ph * P + pw] = store(mlra::pool_bin(load, H, W, g, ph, pw));
                }
            }
        }
    }
    return mlra::kOk;
}

} // namespace

extern "C" {

int mlra_abi_version(void)
{
    return 1;
}

int mlra_forward_cpu(void const* const* features, int const* heights, int const* widths, int num_levels, int batch,
    int channels, float const* rois, int num_rois, void* output, int dtype, int output_size, int sampling_ratio,
    int canonical_level, float canonical_size, int min_level, int max_level, int aligned,
    float const* spatial_scales)
{
    mlra::Params p;
    int const status = mlra::make_params(&p, num_levels, output_size, sampling_ratio, canonical_level,
        canonical_size, min_level, max_level, aligned, spatial_scales);
    if (status != mlra::kOk)
    {
        return status;
    }
    if (num_rois < 0 || batch < 0 || channels < 0)
    {
        return mlra::kErrShape;
    }
    if (num_rois == 0 || channels == 0)
    {
        return mlra::kOk;
    }
    if (features == nullptr || heights == nullptr || widths == nullptr || rois == nullptr || output == nullptr)
    {
        return mlra::kErrNullPointer;
    }
    for (int l = 0; l < num_levels; ++l)
    {
        if (features[l] == nullptr && batch > 0)
        {
            return mlra::kErrNullPointer;
        }
        if (heights[l] < 0 || widths[l] < 0)
        {
            return mlra::kErrShape;
        }
    }
    if (dtype == mlra::kFloat32)
    {
        return forward_cpu<mlra::LoadFloat>(features, heights, widths, batch, channels, rois, num_rois,
            static_cast<float*>(output), p, [](float v) { return v; });
    }
    if (dtype == mlra::kFloat16)
    {
        return forward_cpu<mlra::LoadHalfBits>(features, heights, widths, batch, channels, rois, num_rois,
            static_cast<uint16_t*>(output), p, [](float v) { return mlra::float_to_half_bits(v); });
    }
    return mlra::kErrDtype;
}

int mlra_assign_levels_cpu(float const* rois, int num_rois, int canonical_level, float canonical_size,
    int min_level, int max_level, int32_t* levels)
{
    if (num_rois < 0)
    {
        return mlra::kErrShape;
    }
    if (num_rois > 0 && (rois == nullptr || levels == nullptr))
    {
        return mlra::kErrNullPointer;
    }
    if (min_level > max_level)
    {
        return mlra::kErrLevelRange;
    }
    for (int n = 0; n < num_rois; ++n)
    {
        float const* r = rois + static_cast<int64_t>(n) * 5;
        levels[n] = mlra::assign_level(r[1], r[2], r[3], r[4], canonical_level, canonical_size, min_level, max_level);
    }
    return mlra::kOk;
}

void mlra_float_to_half_cpu(float const* in, uint16_t* out, int64_t n)
{
    for (int64_t i = 0; i < n; ++i)
    {
        out[i] = mlra::float_to_half_bits(in[i]);
    }
}

void mlra_half_to_float_cpu(uint16_t const* in, float* out, int64_t n)
{
    for (int64_t i = 0; i < n; ++i)
    {
        out[i] = mlra::half_bits_to_float(in[i]);
    }
}

} // extern "C"
