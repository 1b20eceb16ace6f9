"""The TensorRT IPluginV3 glue: compiled against TensorRT's headers, driven by a self-test harness (no
TensorRT runtime needed), and loaded by a real TensorRT runtime (tensorrt-lean) where it is installed."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from maskface.contracts import PLUGIN_LIBRARY_NAME
from plugins import binding
from tests.plugins.conftest import lean_env


def test_plugin_library_compiles_against_tensorrt_headers(plugin_library, tensorrt_include):
    version = binding.tensorrt_header_version(tensorrt_include)
    print(f"libmaskface_plugins.so built against TensorRT {version} headers at {tensorrt_include}")
    assert plugin_library.is_file() and plugin_library.name == PLUGIN_LIBRARY_NAME
    # Exports the loadLibrary entry points and the C API (one .so serves Triton, trtexec and ctypes).
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(plugin_library)], capture_output=True, text=True)
    if symbols.returncode == 0:
        for name in ("getCreators", "setLoggerFinder", "mlra_forward_cuda", "mlra_forward_cpu"):
            assert f" T {name}\n" in symbols.stdout, name


def test_ipluginv3_glue_passes_the_selftest(plugin_library, tensorrt_include):
    exe = binding.build_plugin_selftest(tensorrt_include=tensorrt_include)
    proc = subprocess.run([str(exe), str(plugin_library)], capture_output=True, text=True, timeout=60)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ALL PASS" in proc.stdout
    assert proc.stdout.count("PASS ") >= 40


def _run_lean(script: str, library, include, env_extra: dict | None = None) -> str:
    """Run `script` with the tensorrt_lean of the headers' major version (skip when not installed)."""
    major = int(binding.tensorrt_header_version(include).split(".")[0])
    env = lean_env(major)
    if env is None:
        pytest.skip(f"tensorrt_lean {major}.x not installed (scripts/bootstrap.sh installs 11.4.0.106 in the venv "
                    "and 10.16.1.11 in .venv/tensorrt-lean-10.16)")
    env.update(env_extra or {})
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), str(library)],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    version = proc.stdout.split("tensorrt_lean_version=")[-1].split()[0] if "tensorrt_lean_version=" in proc.stdout else ""
    assert not version or version.startswith(f"{major}."), (version, major)
    return proc.stdout


def test_tensorrt_lean_loads_the_library_and_creates_the_plugin(plugin_library, tensorrt_include):
    out = _run_lean(
        """
        import sys
        import numpy as np
        import tensorrt_lean as trt

        registry = trt.get_plugin_registry()
        handle = registry.load_library(sys.argv[1])
        assert handle is not None, "load_library failed"
        creator = registry.get_creator("MultiLevelRoIAlign", "1", "maskface")
        assert creator is not None, "creator not registered"
        assert (creator.name, creator.plugin_version, creator.plugin_namespace) == ("MultiLevelRoIAlign", "1", "maskface")
        names = [f.name for f in creator.field_names]
        assert names == ["output_size", "sampling_ratio", "canonical_level", "canonical_size", "min_level",
                         "max_level", "aligned", "spatial_scales"], names

        def fields(**kw):
            out = []
            for k, v in kw.items():
                if isinstance(v, str):
                    out.append(trt.PluginField(k, np.frombuffer(v.encode() + b"\\0", np.int8), trt.PluginFieldType.CHAR))
                elif isinstance(v, float):
                    out.append(trt.PluginField(k, np.array([v], np.float32), trt.PluginFieldType.FLOAT32))
                else:
                    out.append(trt.PluginField(k, np.array([v], np.int32), trt.PluginFieldType.INT32))
            return trt.PluginFieldCollection(out)

        # As the ONNX parser would pass the node's attributes (plus its plugin_namespace string).
        plugin = creator.create_plugin("mlra", fields(output_size=7, sampling_ratio=0, canonical_size=200.0,
                                                      plugin_namespace="maskface"), trt.TensorRTPhase.BUILD)
        assert plugin is not None
        core = plugin.get_capability_interface(trt.PluginCapabilityType.CORE)
        assert (core.plugin_name, core.plugin_version, core.plugin_namespace) == ("MultiLevelRoIAlign", "1", "maskface")
        build = plugin.get_capability_interface(trt.PluginCapabilityType.BUILD)
        assert build.num_outputs == 1
        meta = build.metadata_string
        assert "output_size=7" in meta and "sampling_ratio=0" in meta and "canonical_size=200" in meta, meta
        assert plugin.get_capability_interface(trt.PluginCapabilityType.RUNTIME) is not None
        runtime_plugin = creator.create_plugin("mlra_rt", fields(), trt.TensorRTPhase.RUNTIME)
        assert runtime_plugin is not None
        bad = creator.create_plugin("bad", fields(min_level=5, max_level=3), trt.TensorRTPhase.BUILD)
        assert bad is None
        registry.deregister_library(handle)
        assert registry.get_creator("MultiLevelRoIAlign", "1", "maskface") is None
        print("tensorrt_lean_version=" + trt.__version__, "loaded the plugin:", meta)
        """,
        plugin_library, tensorrt_include,
    )
    print(out)
    assert "loaded the plugin" in out


def test_plain_dlopen_registers_with_a_loaded_runtime_like_triton(plugin_library, tensorrt_include):
    """Triton's TensorRT backend only dlopen()s plugin libraries; the library must then register itself
    (and a later loadLibrary of the same file must still succeed)."""
    script = """
        import ctypes, sys
        import tensorrt_lean as trt

        registry = trt.get_plugin_registry()
        ctypes.CDLL(sys.argv[1])
        found = registry.get_creator("MultiLevelRoIAlign", "1", "maskface") is not None
        handle = registry.load_library(sys.argv[1])
        print("registered_at_load", found, "load_library_ok", handle is not None,
              "creator_after", registry.get_creator("MultiLevelRoIAlign", "1", "maskface") is not None)
        """
    out = _run_lean(script, plugin_library, tensorrt_include)
    assert "registered_at_load True load_library_ok True creator_after True" in out, out
    off = _run_lean(script, plugin_library, tensorrt_include, {"MASKFACE_PLUGINS_NO_AUTOREGISTER": "1"})
    assert "registered_at_load False load_library_ok True creator_after True" in off, off
