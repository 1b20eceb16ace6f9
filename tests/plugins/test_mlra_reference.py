"""The CPU reference of the multi-level RoIAlign (same header math as the CUDA kernel) against torchvision."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch

from maskface.modeling.levels import assign_levels
from plugins import binding
from plugins.testing import boundary_rois, make_features, make_rois, torchvision_multilevel


def _expected(features, rois, **kw) -> np.ndarray:
    maps = [torch.from_numpy(f.astype(np.float32)) for f in features]
    return torchvision_multilevel(maps, torch.from_numpy(rois), **kw).numpy()


def test_library_builds_and_exports_the_c_entry_points(mlra_lib):
    for name in (
        "mlra_forward_cpu", "mlra_forward_cuda", "mlra_assign_levels_cpu", "mlra_assign_levels_cuda",
        "mlra_status_string", "mlra_cuda_device_count",
    ):
        assert hasattr(mlra_lib, name), name
    assert mlra_lib.mlra_abi_version() == binding.ABI_VERSION
    assert binding.cuda_device_count(mlra_lib) >= 0  # 0 on this CPU machine, and no crash
    assert mlra_lib.mlra_status_string(-2).decode().startswith("number of feature maps")


@pytest.mark.parametrize("sampling_ratio", [0, 1, 2])
def test_fp32_reference_equals_torchvision_on_the_eq6_level(mlra_lib, sampling_ratio):
    rng = np.random.default_rng(100 + sampling_ratio)
    features = make_features(rng, batch=2, channels=4)
    rois = make_rois(rng, n=400, batch=2)
    levels = assign_levels(rois[:, 1:])
    assert set(np.unique(levels)) == {2, 3, 4, 5, 6}  # every map is exercised
    got = binding.multilevel_roi_align_cpu(features, rois, sampling_ratio=sampling_ratio)
    want = _expected(features, rois, sampling_ratio=sampling_ratio)
    assert got.dtype == np.float32 and got.shape == (400, 4, 14, 14)
    err = np.abs(got - want).max()
    print(f"FP32 sampling_ratio={sampling_ratio}: max abs err {err:.3g}")
    assert err <= 1e-5
    # Rows that sample inside the image are non-trivial (the comparison is not zeros == zeros).
    assert (np.abs(want).reshape(len(rois), -1).max(axis=1) > 0).sum() > 250


@pytest.mark.parametrize("sampling_ratio", [0, 1, 2])
def test_fp16_features_accumulate_in_fp32(mlra_lib, sampling_ratio):
    rng = np.random.default_rng(200 + sampling_ratio)
    features16 = make_features(rng, batch=2, channels=4, dtype=np.float16)
    rois = make_rois(rng, n=300, batch=2)
    got = binding.multilevel_roi_align_cpu(features16, rois, sampling_ratio=sampling_ratio)
    assert got.dtype == np.float16
    # Against torchvision in float32 on the same (fp16-representable) values.
    want = _expected(features16, rois, sampling_ratio=sampling_ratio)
    err = np.abs(got.astype(np.float32) - want).max()
    print(f"FP16 sampling_ratio={sampling_ratio}: max abs err vs torchvision fp32 {err:.3g}")
    assert err <= 1e-2
    # FP32 accumulation: the FP16 path equals the FP32 path on the upcast maps, rounded once at the end.
    got32 = binding.multilevel_roi_align_cpu([f.astype(np.float32) for f in features16], rois,
                                             sampling_ratio=sampling_ratio)
    np.testing.assert_array_equal(got, got32.astype(np.float16))


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_zero_rois_give_an_empty_output(mlra_lib, dtype):
    features = make_features(np.random.default_rng(0), batch=1, channels=5, dtype=dtype)
    out = binding.multilevel_roi_align_cpu(features, np.zeros((0, 5), np.float32))
    assert out.shape == (0, 5, 14, 14) and out.dtype == dtype


def test_batch_index_selects_the_image_and_out_of_range_indices_pool_zeros(mlra_lib):
    rng = np.random.default_rng(3)
    features = make_features(rng, batch=3, channels=2)
    rois = make_rois(rng, n=60, batch=3)
    rois[:20, 0] = 2
    rois[20:40, 0] = 1
    want = _expected(features, rois)
    got = binding.multilevel_roi_align_cpu(features, rois)
    assert np.abs(got - want).max() <= 1e-5
    # The image matters: pooling the same boxes from image 0 gives other values.
    moved = rois.copy()
    moved[:, 0] = 0
    other = binding.multilevel_roi_align_cpu(features, moved)
    inside = np.abs(want[:40]).reshape(40, -1).max(axis=1) > 0
    assert np.abs(other[:40][inside] - got[:40][inside]).max() > 0.1
    # Indices outside [0, B) read nothing and give zeros (torchvision would read out of bounds).
    bad = rois[:4].copy()
    bad[:, 0] = [3, -1, 7, 1e9]
    assert not binding.multilevel_roi_align_cpu(features, bad).any()


def test_level_assignment_at_the_eq6_boundaries(mlra_lib):
    rois, expected = boundary_rois()
    # plus extremes: nothing, a point, a 5000 px box (level 7 -> capped at 6), an inverted box
    extra = np.array([[0, 0, 0, 0, 0], [0, 5, 5, 5.5, 5.5], [0, 0, 0, 5000, 5000], [0, 50, 50, 10, 10]], np.float32)
    rois = np.concatenate([rois, extra])
    expected = np.concatenate([expected, [2, 2, 6, 2]])
    table = {f"{np.sqrt((r[3] - r[1]) * (r[4] - r[2])):.2f}": int(k) for r, k in zip(rois[:10], expected[:10])}
    print("sqrt(area) -> level:", table)
    np.testing.assert_array_equal(binding.assign_levels_cpu(rois), expected)  # the C code of the plugin
    np.testing.assert_array_equal(assign_levels(rois[:, 1:]), expected)      # numpy float32 rule
    # Constant maps (value = level) covering a 2048x2048 image: the pooled value shows which map each ROI read.
    features = [np.full((1, 1, 2048 >> l, 2048 >> l), float(l), np.float32) for l in range(2, 7)]
    valid = (rois[:, 3] > rois[:, 1]) & (rois[:, 4] > rois[:, 2]) & (rois[:, 3:] < 2048).all(axis=1)
    assert valid.sum() == 11
    pooled = binding.multilevel_roi_align_cpu(features, rois[valid], sampling_ratio=2, output_size=2)
    np.testing.assert_allclose(pooled[:, 0], np.broadcast_to(expected[valid, None, None], (valid.sum(), 2, 2)),
                               rtol=0, atol=1e-6)


def test_level_rule_agrees_with_numpy_and_the_python_pooler(mlra_lib):
    rng = np.random.default_rng(11)
    n = 20000
    xy = rng.uniform(-500, 2000, (n, 2)).astype(np.float32)
    wh = np.exp(rng.uniform(np.log(0.01), np.log(8000), (n, 2))).astype(np.float32)
    wh[::50] *= -1  # some inverted boxes
    rois = np.concatenate([np.zeros((n, 1), np.float32), xy, xy + wh], axis=1)
    c_levels = binding.assign_levels_cpu(rois)
    np.testing.assert_array_equal(c_levels, assign_levels(rois[:, 1:]))
    assert np.bincount(c_levels, minlength=7)[2:].min() > 100
    from maskface.modeling.poolers import assign_levels as pooler_levels

    np.testing.assert_array_equal(c_levels, pooler_levels(torch.from_numpy(rois[:, 1:])).numpy())


def test_python_and_cpp_level_rules_agree_on_a_sweep_of_box_sizes(mlra_lib):
    """The one Python Eq. 6 (maskface.modeling.levels) against the one C++ Eq. 6 (mlra_math.h's
    assign_level through the CPU reference): every integer square side 1..4000, sides 1/100 px either
    side of each level edge 224 * 2^j, non-square boxes, and NaN / inf / empty / inverted boxes."""
    sides = np.arange(1, 4001, dtype=np.float32)
    edges = 224.0 * 2.0 ** np.arange(-3, 4)  # 28 ... 1792: the clamped edges (< 112, > 1792) included
    near = np.concatenate([edges - 0.01, edges, edges + 0.01]).astype(np.float32)
    sq = np.concatenate([sides, near])
    boxes = np.stack([np.full_like(sq, 7.0), np.full_like(sq, 3.0), 7.0 + sq, 3.0 + sq], axis=1)
    aspect = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides * 4, sides / 4], axis=1)  # same area
    odd = np.array([[0, 0, np.nan, 5], [np.nan] * 4, [0, 0, np.inf, 5], [0, 0, np.inf, np.inf], [0, 0, 0, 0],
                    [10, 10, 0, 0], [5, 5, 4, 9]], np.float32)
    boxes = np.concatenate([boxes, aspect, odd]).astype(np.float32)
    rois = np.concatenate([np.zeros((len(boxes), 1), np.float32), boxes], axis=1)
    python = assign_levels(boxes)
    np.testing.assert_array_equal(python, binding.assign_levels_cpu(rois))
    np.testing.assert_array_equal(python, assign_levels(torch.from_numpy(boxes)).numpy())  # torch path too
    # Hand-computed levels at the edges the brief names: floor(3 + log2(s / 224)), clamped to 2..6.
    by_side = dict(zip(sq.tolist(), python[: len(sq)].tolist()))
    assert [by_side[s] for s in (111, 113, 223, 225, 447, 449, 895, 897, 1791, 1793, 4000)] == \
        [2, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    assert python[-7:].tolist() == [2, 2, 6, 6, 2, 2, 2]  # NaN -> min, inf -> max, empty / inverted -> min


def test_float16_conversions_match_numpy_bit_for_bit(mlra_lib):
    rng = np.random.default_rng(5)
    specials = np.array(
        [0.0, -0.0, 1.0, -2.5, 65504.0, 65519.99, 65520.0, 1e6, -1e6, np.inf, -np.inf, 6.1035156e-05,
         6.0e-05, 5.96e-08, 2.98e-08, 2.9802322e-08, 1e-10, 1.0009765625, 1.00048828125, 1.00146484375],
        dtype=np.float32,
    )
    values = np.concatenate([
        specials,
        rng.standard_normal(100_000).astype(np.float32) * (np.float32(10.0) ** rng.integers(-9, 6, 100_000)).astype(np.float32),
        rng.integers(0, 2**32, 100_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
    ]).astype(np.float32)
    assert values.dtype == np.float32
    values = values[~np.isnan(values)]
    with np.errstate(over="ignore"):
        want = values.astype(np.float16)
    np.testing.assert_array_equal(binding.float_to_half(values).view(np.uint16), want.view(np.uint16))
    every = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
    back = binding.half_to_float(every)
    finite = ~np.isnan(every)
    np.testing.assert_array_equal(back[finite].view(np.uint32), every[finite].astype(np.float32).view(np.uint32))
    assert np.isnan(back[~finite]).all()


def test_non_aligned_mode_matches_torchvision(mlra_lib):
    rng = np.random.default_rng(9)
    features = make_features(rng, batch=2, channels=3)
    rois = make_rois(rng, n=200, batch=2)
    got = binding.multilevel_roi_align_cpu(features, rois, sampling_ratio=0, aligned=False)
    want = _expected(features, rois, sampling_ratio=0, aligned=False)
    assert np.abs(got - want).max() <= 1e-5


def test_explicit_spatial_scales_and_other_level_ranges(mlra_lib):
    rng = np.random.default_rng(21)
    features = make_features(rng, batch=1, channels=3)
    rois = make_rois(rng, n=100, batch=1)
    default = binding.multilevel_roi_align_cpu(features, rois)
    explicit = binding.multilevel_roi_align_cpu(features, rois, spatial_scales=[0.25, 0.125, 0.0625, 0.03125, 0.015625])
    np.testing.assert_array_equal(default, explicit)
    # Levels 3..5 only, 7x7 output, canonical size 200.
    maps = features[1:4]
    kw = dict(output_size=7, canonical_size=200.0, min_level=3, max_level=5, sampling_ratio=2)
    got = binding.multilevel_roi_align_cpu(maps, rois, **kw)
    want = torchvision_multilevel([torch.from_numpy(m) for m in maps], torch.from_numpy(rois), **kw).numpy()
    assert got.shape == (100, 3, 7, 7) and np.abs(got - want).max() <= 1e-5


def test_bad_arguments_raise_clear_errors(mlra_lib):
    rng = np.random.default_rng(0)
    features = make_features(rng, batch=1, channels=2)
    rois = make_rois(rng, n=5, batch=1)
    with pytest.raises(ValueError, match="4 feature maps for levels 2..6"):
        binding.multilevel_roi_align_cpu(features[:4], rois)
    with pytest.raises(TypeError, match="float32 or float16"):
        binding.multilevel_roi_align_cpu([f.astype(np.float64) for f in features], rois)
    with pytest.raises(TypeError, match="map 0 is float32"):
        binding.multilevel_roi_align_cpu(features[:4] + [features[4].astype(np.float16)], rois)
    with pytest.raises(ValueError, match=r"rois must be \[N, 5\]"):
        binding.multilevel_roi_align_cpu(features, rois[:, :4])
    with pytest.raises(binding.MlraError, match=r"sampling_ratio must be in \[0, 64\]"):
        binding.multilevel_roi_align_cpu(features, rois, sampling_ratio=-1)
    with pytest.raises(binding.MlraError, match="spatial scales"):
        binding.multilevel_roi_align_cpu(features, rois, spatial_scales=[0.25, 0.125, 0.0, 0.03125, 0.015625])
    # The C entry point itself rejects a level count that does not match the level range.
    n = 4
    ptrs = (ctypes.c_void_p * n)(*[f.ctypes.data for f in features[:n]])
    dims = (ctypes.c_int * n)(*([8] * n))
    out = np.empty((5, 2, 14, 14), np.float32)
    status = mlra_lib.mlra_forward_cpu(ptrs, dims, dims, n, 1, 2, rois.ctypes.data, 5, out.ctypes.data, 0,
                                       14, 2, 3, 224.0, 2, 6, 1, None)
    assert status == -2


def test_missing_nvcc_is_reported(monkeypatch, tmp_path):
    from plugins import nvcc_build

    monkeypatch.setattr(nvcc_build, "find_nvcc", lambda: None)
    with pytest.raises(binding.BuildError, match="nvcc not found"):
        binding.build_library(build_dir=tmp_path)


def test_missing_tensorrt_headers_are_reported(tmp_path):
    with pytest.raises(binding.BuildError, match="no NvInferRuntime.h"):
        binding.build_plugin_library(build_dir=tmp_path, tensorrt_include=tmp_path)


def test_build_is_cached_by_source_hash(mlra_lib, tmp_path):
    import os
    import time

    archs = os.environ.get("MASKFACE_TEST_CUDA_ARCHS", "75")
    first = binding.build_library(archs=archs)
    t0 = time.perf_counter()
    again = binding.build_library(archs=archs)
    assert again == first and time.perf_counter() - t0 < 5.0  # no recompilation
    assert first.parent.name.startswith("py-") and first.parent.parent == binding.BUILD_ROOT
