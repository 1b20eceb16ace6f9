// Edge cases of the CPU reference, built with AddressSanitizer + UBSan by tests/plugins/test_mlra_sanitizers.py:
//
//   g++ -std=c++17 -g -fsanitize=address,undefined -fno-sanitize-recover=all -I plugins/include \
//       plugins/src/mlra_reference.cpp plugins/tools/reference_edge_cases.cpp -o reference_edge_cases
//
// Every feature map holds the constant 3, so a ROI that samples inside its map pools exactly 3 in every
// bin (bilinear weights sum to 1) and a ROI that must pool zeros is told apart from one that sampled.
// Prints one "PASS name" / "FAIL name: why" line per case and "ALL PASS" at the end; exit code 1 on a FAIL.
// A sanitizer finding aborts the program with its report (exit code != 0).
#include "maskface_plugins/mlra_api.h"

#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

namespace
{

constexpr int kLevels = 5; // levels 2..6
constexpr int kBatch = 2;
constexpr int kChannels = 2;
constexpr int kOut = 7;
constexpr float kValue = 3.0f;
int const kSide[kLevels] = {64, 32, 16, 8, 4}; // a 256x256 input at strides 4..64

int gFailures = 0;

void report(bool ok, std::string const& name, std::string const& why)
{
    std::printf(ok ? "PASS %s\n" : "FAIL %s: %s\n", name.c_str(), why.c_str());
    gFailures += ok ? 0 : 1;
}

//! Pools one ROI with the given sampling ratio; returns the status and fills `out` [C, kOut, kOut].
int pool(float const roi[5], int sampling_ratio, std::vector<float>& out, std::vector<std::vector<float>>& maps)
{
    void const* ptrs[kLevels];
    int heights[kLevels];
    for (int l = 0; l < kLevels; ++l)
    {
        ptrs[l] = maps[l].data();
        heights[l] = kSide[l];
    }
    out.assign(static_cast<size_t>(kChannels) * kOut * kOut, -1.0f);
    return mlra_forward_cpu(ptrs, heights, heights, kLevels, kBatch, kChannels, roi, 1, out.data(), 0, kOut,
        sampling_ratio, 3, 224.0f, 2, 6, 1, nullptr);
}

void expect_all(std::string const& name, float const roi[5], int sampling_ratio, float want,
    std::vector<std::vector<float>>& maps)
{
    std::vector<float> out;
    int const status = pool(roi, sampling_ratio, out, maps);
    if (status != 0)
    {
        report(false, name, "status " + std::to_string(status));
        return;
    }
    for (float v : out)
    {
        if (!(std::fabs(v - want) <= 1e-5f))
        {
            report(false, name, "got " + std::to_string(v) + ", want " + std::to_string(want));
            return;
        }
    }
    report(true, name, "");
}

} // namespace

int main()
{
    std::vector<std::vector<float>> maps(kLevels);
    for (int l = 0; l < kLevels; ++l)
    {
        maps[l].assign(static_cast<size_t>(kBatch) * kChannels * kSide[l] * kSide[l], kValue);
    }
    float const nan = std::numeric_limits<float>::quiet_NaN();
    float const inf = std::numeric_limits<float>::infinity();

    // Control: a ROI inside the image samples the constant map.
    float const inside[5] = {1.0f, 40.0f, 40.0f, 120.0f, 140.0f};
    expect_all("inside_roi_pools_the_map", inside, 2, kValue, maps);
    expect_all("inside_roi_adaptive_pools_the_map", inside, 0, kValue, maps);

    // Coordinates that are not finite pool zeros (no NaN reaches a float -> int conversion).
    float const coords[][4] = {{nan, 10, 50, 60}, {10, nan, 50, 60}, {10, 10, nan, 60}, {10, 10, 50, nan},
        {nan, nan, nan, nan}, {-inf, 10, 50, 60}, {10, 10, inf, 60}, {-inf, -inf, inf, inf}};
    for (int s : {0, 2})
    {
        for (size_t i = 0; i < sizeof(coords) / sizeof(coords[0]); ++i)
        {
            float const roi[5] = {0.0f, coords[i][0], coords[i][1], coords[i][2], coords[i][3]};
            expect_all("nonfinite_coords_" + std::to_string(i) + "_sampling_" + std::to_string(s), roi, s, 0.0f, maps);
        }
    }

    // Batch indices outside [0, batch) or NaN / inf pool zeros (no out-of-bounds read).
    float const batches[] = {-1.0f, 2.0f, 2.5f, 1e9f, -1e9f, nan, inf, -inf};
    for (size_t i = 0; i < sizeof(batches) / sizeof(batches[0]); ++i)
    {
        float const roi[5] = {batches[i], 40.0f, 40.0f, 120.0f, 140.0f};
        expect_all("batch_index_" + std::to_string(i), roi, 2, 0.0f, maps);
    }
    float const last_batch[5] = {1.9f, 40.0f, 40.0f, 120.0f, 140.0f}; // truncates to 1, as torchvision
    expect_all("batch_index_1.9_truncates_to_1", last_batch, 2, kValue, maps);

    // Huge finite ROIs with the adaptive ratio: the sample grid is clamped (64 per axis), the call ends,
    // and every sample lies far outside the maps -> zeros. The width overflows to inf in the first one.
    float const huge[][5] = {{0, -3e38f, -3e38f, 3e38f, 3e38f}, {0, -1e30f, -1e30f, 1e30f, 1e30f},
        {1, 1e20f, 1e20f, 2e20f, 2e20f}};
    for (size_t i = 0; i < sizeof(huge) / sizeof(huge[0]); ++i)
    {
        expect_all("huge_roi_adaptive_" + std::to_string(i), huge[i], 0, 0.0f, maps);
    }
    // A ROI covering the whole 256x256 input pools the constant everywhere.
    float const whole[5] = {0.0f, 0.0f, 0.0f, 256.0f, 256.0f};
    expect_all("whole_image_adaptive", whole, 0, kValue, maps);

    // sampling_ratio above the clamp is refused (status -5), not run.
    std::vector<float> out;
    int const status = pool(inside, 65, out, maps);
    report(status == -5, "sampling_ratio_65_refused", "status " + std::to_string(status));

    if (gFailures == 0)
    {
        std::printf("ALL PASS\n");
        return 0;
    }
    std::printf("%d FAILED\n", gFailures);
    return 1;
}
