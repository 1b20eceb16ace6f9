"""engines.json end to end: the real writer (export.tensorrt_build.build_engines, TensorRT's builder
replaced by the stand-in) -> EngineManifest.read -> render_repository("tensorrt") / `maskface serve
--target tensorrt --render-only` -> the rendered Triton configs, with the defaults of both sides,
and the errors that name the value and the command to change."""
from __future__ import annotations

import json
import sys

import pytest

from export import tensorrt_build
from maskface.serving.manifest import (
    DEFAULT_MAX_BATCH, DEFAULT_MAX_FACES, DEFAULT_MAX_SIZE, EngineManifest, ManifestError,
)
from maskface.serving.repository import ServingParams, parse_model_config, read_manifest, render_repository
from tests.export.conftest_trt import exported_graphs
from tests.export.trt_standin import make_tensorrt

mc = pytest.importorskip("tritonclient.grpc.model_config_pb2")


@pytest.fixture(scope="module")
def graphs(tmp_path_factory, export_model):
    return exported_graphs(tmp_path_factory, export_model)


@pytest.fixture(scope="module")
def fake_plugin(tmp_path_factory):
    path = tmp_path_factory.mktemp("plugin") / "libmaskface_plugins.so"
    path.write_bytes(b"stand-in plugin library")
    return path


def _build(out, graphs, plugin, **kwargs):
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "tensorrt", make_tensorrt("10.16.0.0"))
        mp.setattr(tensorrt_build, "_cuda_reason", lambda: None)
        return tensorrt_build.build_engines({k: graphs[k] for k in ("detector", "keypoint_head")}, out,
                                            plugin_library=plugin, echo=None, fp16_dir=out / "fp16", **kwargs)


@pytest.fixture(scope="module")
def default_build(tmp_path_factory, graphs, fake_plugin):
    out = tmp_path_factory.mktemp("engines")
    return _build(out, graphs, fake_plugin), out


def test_defaults_agree_on_both_sides(default_build):
    manifest, _ = default_build
    params = ServingParams()
    assert (manifest.max_batch, manifest.max_size, manifest.max_faces) == (4, 1024, 750)
    assert (DEFAULT_MAX_BATCH, DEFAULT_MAX_SIZE, DEFAULT_MAX_FACES) == (4, 1024, 750)
    assert params.detector_max_batch_size == manifest.max_batch and params.max_detections == manifest.max_faces
    assert -(-params.max_side // params.size_divisibility) * params.size_divisibility <= manifest.max_size
    from export.build_engines import parse_args

    args = parse_args([])
    assert (args.max_batch, args.max_size, args.max_faces) == (4, 1024, 750)


def test_build_manifest_render_validate(default_build, fake_plugin, tmp_path):
    manifest, engines = default_build
    assert EngineManifest.read(engines) == manifest
    repo = render_repository("tensorrt", tmp_path / "trt", engines_dir=engines, plugin_library=fake_plugin)
    det = parse_model_config(repo / "maskface_detector" / "config.pbtxt")
    kp = parse_model_config(repo / "maskface_keypoints" / "config.pbtxt")
    nms = parse_model_config(repo / "maskface_nms" / "config.pbtxt")
    assert det.max_batch_size == manifest.max_batch == 4
    outputs = {t.name: tuple(t.dims) for t in det.output}
    assert outputs["scores"] == (3840,) and outputs["boxes"] == (3840, 4) and outputs["m2"] == (256, -1, -1)
    assert {t.name: tuple(t.dims) for t in kp.output}["landmarks"] == (-1, 5, 2)
    assert {t.name: tuple(t.dims) for t in nms.input}["scores"] == (1, 3840)
    rendered = read_manifest(repo)
    assert rendered["engines_metadata"] == manifest.to_json()
    assert rendered["params"]["pre_nms_topk"] == 3840 and rendered["params"]["num_landmarks"] == 5


def test_serve_command_takes_the_default_build(default_build, fake_plugin, tmp_path, capsys):
    from maskface.cli import main

    _, engines = default_build
    code = main(["serve", "--target", "tensorrt", "--repo", str(tmp_path / "repo"), "--engines-dir", str(engines),
                 "--plugin", str(fake_plugin), "--render-only"])
    assert code == 0, capsys.readouterr()
    assert parse_model_config(tmp_path / "repo" / "maskface_detector" / "config.pbtxt").max_batch_size == 4


def test_mismatches_name_the_value_and_the_command(tmp_path, graphs, fake_plugin):
    manifest = _build(tmp_path / "small", graphs, fake_plugin, max_batch=1, max_size=512, max_faces=100)
    with pytest.raises(ManifestError) as info:
        render_repository("tensorrt", tmp_path / "r", engines_dir=tmp_path / "small", plugin_library=fake_plugin,
                          max_side=640)
    text = str(info.value)
    assert "detector_max_batch_size=4 exceeds the detector engine's max batch 1" in text
    assert "export/build_engines.py --max-batch 4" in text and "maskface serve --param detector_max_batch_size=1" in text
    assert "max_side=640 pads to 640 px, beyond the detector engine's profile (512 px)" in text
    assert "export/build_engines.py --max-size 640" in text and "maskface serve --max-side 512" in text
    assert "max_detections=750 exceeds the keypoint engine's max ROIs 100" in text
    assert "--max-faces 750" in text and "maskface serve --max-detections 100" in text
    with pytest.raises(ManifestError, match=r"pre_nms_topk=5000 was asked for but the engines were built with 3840: "
                                            r"serve with `maskface serve --param pre_nms_topk=3840`"):
        manifest.check_serving(max_batch=1, max_side=512, size_divisibility=64, max_detections=100, pre_nms_topk=5000)
    # The same command line through the CLI: exit 2 with the message.
    from maskface.cli import main

    assert main(["serve", "--target", "tensorrt", "--repo", str(tmp_path / "cli"), "--engines-dir",
                 str(tmp_path / "small"), "--plugin", str(fake_plugin), "--render-only"]) == 2


def test_engines_without_a_manifest_or_with_a_bad_one_are_refused(default_build, fake_plugin, tmp_path):
    manifest, _ = default_build
    engines = tmp_path / "engines"
    engines.mkdir()
    for plan in ("detector.plan", "keypoint_head.plan"):
        (engines / plan).write_bytes(b"plan")
    with pytest.raises(ManifestError, match="engines.json not found"):
        render_repository("tensorrt", tmp_path / "a", engines_dir=engines, plugin_library=fake_plugin)
    good = manifest.to_json()
    cases = [
        ({k: v for k, v in good.items() if k != "max_batch"}, "missing max_batch"),
        ({**good, "max_batch": "4"}, "max_batch='4' must be an integer"),
        ({**good, "format": 1}, "format 1, this code reads format 2"),
        ({**good, "max_size": 1000}, "max_size=1000 must be a positive multiple of 64"),
        ({**good, "max_batch": 8}, r"detector profile max \(4, 3, 1024, 1024\) disagrees with max_batch / max_size"),
        ({**good, "precision": "int8"}, "precision 'int8' is not one of"),
        ({**good, "plugin": None}, "needs the plugin library entry"),
    ]
    for data, message in cases:
        (engines / "engines.json").write_text(json.dumps(data))
        with pytest.raises(ManifestError, match=message):
            render_repository("tensorrt", tmp_path / "b", engines_dir=engines, plugin_library=fake_plugin)
    bad_profile = json.loads(json.dumps(good))
    bad_profile["engines"]["keypoint_head"]["profile"]["rois"]["opt"] = [1000, 5]
    with pytest.raises(ManifestError, match="0 <= min <= opt <= max"):
        EngineManifest.from_json(bad_profile)
    (engines / "engines.json").write_text("{not json")
    with pytest.raises(ManifestError, match="is not valid JSON"):
        EngineManifest.read(engines)
