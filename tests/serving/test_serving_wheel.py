"""An installed maskface (a wheel, `pip install` not `-e`) serves the cpu target: the templates come
from the package data, the Python stages import the installed package (no path preamble), and the
answers equal the in-process reference.

The wheel goes into a fresh venv with no route to this checkout: its site-packages sees the test
venv's dependencies through a .pth line (a plain path: the editable finder there is not run), and
everything runs from a temporary folder, so `import maskface` can only find the wheel's copy."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from serving_testlib import LOW_THRESHOLD, MAX_DETECTIONS, MAX_SIDE, ServeCommand

pytest.importorskip("tritonclient.http")
from maskface.serving.server import ServerError, _process_group_members, find_tritonserver  # noqa: E402

try:
    find_tritonserver()
except ServerError as _exc:
    pytest.skip(f"no tritonserver: {_exc}", allow_module_level=True)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _run(cmd, **kw) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def wheel_python(tmp_path_factory) -> Path:
    """python of a fresh venv holding only the maskface wheel built from this repository."""
    work = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", str(REPO_ROOT), "-w", str(work / "dist"), "--no-deps",
          "--no-build-isolation", "--quiet"])
    wheels = list((work / "dist").glob("maskface-*.whl"))
    assert len(wheels) == 1, wheels
    _run([sys.executable, "-m", "venv", "--without-pip", str(work / "venv")])
    python = work / "venv" / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", "--target", str(site),
          str(wheels[0])])
    (site / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def test_wheel_installs_the_templates_and_the_build_packages(wheel_python, tmp_path):
    site = str(wheel_python.parents[1])
    code = ("import maskface, export.build_engines, plugins.binding, benchmarks.latency;"
            "from maskface.serving.repository import templates_dir;"
            "from maskface.demo.weights import DEMO_CHECKPOINT;"
            "print(maskface.__file__); print(templates_dir()); print(plugins.binding.SRC_DIR); print(DEMO_CHECKPOINT)")
    lines = _run([str(wheel_python), "-c", code], cwd=tmp_path).splitlines()
    assert all(line.startswith(site) for line in lines), lines  # nothing from the checkout
    assert Path(lines[1], "maskface", "config.pbtxt.in").is_file()
    assert Path(lines[2], "mlra_kernel.cu").is_file()
    # the shipped demo model travels with the package whenever the checkout has it
    shipped = REPO_ROOT / "maskface" / "demo" / "maskface_demo.pth"
    assert Path(lines[3]).is_file() == shipped.is_file()


def _stub_pythonpaths(server_pid: int) -> list[str]:
    """PYTHONPATH of each Python-backend stub of the server's process group."""
    paths = []
    for pid in _process_group_members(server_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"triton_python_backend_stub"):
            env = dict(e.decode().split("=", 1) for e in environ if b"=" in e)
            paths.append(env.get("PYTHONPATH", ""))
    return paths


def test_installed_wheel_serves_the_cpu_target(wheel_python, onnx_dir, photos, reference, tmp_path):
    from maskface.serving.client import MaskFaceClient
    from test_serving_server import mismatch

    site = str(wheel_python.parents[1])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MASKFACE_TRITON_MODELS")}
    command = [str(wheel_python), "-m", "maskface.cli", "serve", "--target", "cpu", "--repo", str(tmp_path / "repo"),
               "--onnx-dir", str(onnx_dir), "--http-port", "0", "--grpc-port", "0", "--max-side", str(MAX_SIDE),
               "--score-threshold", str(LOW_THRESHOLD), "--max-detections", str(MAX_DETECTIONS),
               "--param", "preprocess_instances=1", "--ready-timeout", "180"]
    with ServeCommand(command, cwd=tmp_path, env=env) as serve:
        stub_paths = _stub_pythonpaths(serve.server_pid)
        assert stub_paths and all(p.split(os.pathsep)[0].startswith(site) for p in stub_paths), stub_paths
        with MaskFaceClient(serve.http_url, "http", timeout=60) as client:
            for name, data in photos.items():
                got = client.detect(data)
                assert len(reference[name]["scores"]) > 0
                assert mismatch(got, reference[name]) is None, f"{name}: {mismatch(got, reference[name])}"
    rendered = (tmp_path / "repo" / "maskface_detector" / "config.pbtxt").read_text()
    assert "maskface_root" not in rendered
    assert serve.returncode == 0, serve.text
    assert _process_group_members(serve.server_pid) == []
