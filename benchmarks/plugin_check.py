"""Multi-level RoIAlign check for a GPU machine: build the kernel, compare it with torchvision.ops.roi_align on
CUDA (FP32 and FP16 maps, sampling ratios 0/1/2, the test suite's ROI mix), time it for 1, 16 and 128 ROIs,
and write plugin_check.json + plugin_check.md.

    python benchmarks/plugin_check.py [--out DIR] [--archs 90] [--cpu-only]

Without a CUDA device (or with --cpu-only) it builds the library and checks the CPU reference against
torchvision on the CPU, and says that the GPU part was skipped. Exit status 0 when every check passes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

import numpy as np

from plugins import binding
from plugins.testing import boundary_rois, make_features, make_rois, torchvision_multilevel

TOL_FP32 = 1e-5
TOL_FP16 = 1e-2
TIMED_ROIS = (1, 16, 128)


def log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------------ parity


def _cases(seed: int = 0):
    """(name, features fp32, rois) of the parity checks: the test suite's ROI mix on a 2-image batch."""
    rng = np.random.default_rng(seed)
    feats = make_features(rng, batch=2, channels=8, image_hw=(256, 320))
    rois = make_rois(rng, n=500, batch=2)
    yield "mixed ROIs, 256x320, B=2, C=8", feats, rois
    big = make_features(rng, batch=1, channels=4, image_hw=(640, 640))
    yield "mixed ROIs, 640x640, B=1, C=4", big, make_rois(rng, n=300, image_hw=(640, 640), batch=1)
    b_rois, _ = boundary_rois()
    yield "squares next to the Eq. 6 boundaries", big, b_rois


def cpu_parity(results: list[dict]) -> None:
    import torch

    for name, feats, rois in _cases():
        for sr in (0, 1, 2):
            want = torchvision_multilevel([torch.from_numpy(f) for f in feats], torch.from_numpy(rois),
                                          sampling_ratio=sr).numpy()
            got = binding.multilevel_roi_align_cpu(feats, rois, sampling_ratio=sr)
            err = float(np.abs(got - want).max()) if got.size else 0.0
            results.append(dict(check=f"CPU reference FP32 vs torchvision CPU: {name}", sampling_ratio=sr,
                                max_abs_err=err, tol=TOL_FP32, ok=err <= TOL_FP32))
            f16 = [f.astype(np.float16) for f in feats]
            want16 = torchvision_multilevel([torch.from_numpy(f.astype(np.float32)) for f in f16],
                                            torch.from_numpy(rois), sampling_ratio=sr).numpy()
            got16 = binding.multilevel_roi_align_cpu(f16, rois, sampling_ratio=sr).astype(np.float32)
            err16 = float(np.abs(got16 - want16).max()) if got16.size else 0.0
            results.append(dict(check=f"CPU reference FP16 vs torchvision CPU fp32: {name}", sampling_ratio=sr,
                                max_abs_err=err16, tol=TOL_FP16, ok=err16 <= TOL_FP16))


def gpu_parity(results: list[dict], device) -> None:
    import torch

    for name, feats, rois in _cases(seed=1):
        r = torch.from_numpy(rois).to(device)
        maps32 = [torch.from_numpy(f).to(device) for f in feats]
        f16 = [f.astype(np.float16) for f in feats]
        maps16 = [torch.from_numpy(f).to(device) for f in f16]
        maps16_up = [m.float() for m in maps16]
        for sr in (0, 1, 2):
            got = binding.multilevel_roi_align_cuda(maps32, r, sampling_ratio=sr)
            want = torchvision_multilevel(maps32, r, sampling_ratio=sr)
            ref = binding.multilevel_roi_align_cpu(feats, rois, sampling_ratio=sr)
            torch.cuda.synchronize()
            err = (got - want).abs().max().item() if got.numel() else 0.0
            err_ref = float(np.abs(got.cpu().numpy() - ref).max()) if got.numel() else 0.0
            results.append(dict(check=f"CUDA FP32 vs torchvision CUDA: {name}", sampling_ratio=sr,
                                max_abs_err=err, tol=TOL_FP32, ok=err <= TOL_FP32))
            results.append(dict(check=f"CUDA FP32 vs CPU reference: {name}", sampling_ratio=sr,
                                max_abs_err=err_ref, tol=TOL_FP32, ok=err_ref <= TOL_FP32))

            got16 = binding.multilevel_roi_align_cuda(maps16, r, sampling_ratio=sr)
            want16 = torchvision_multilevel(maps16_up, r, sampling_ratio=sr)
            ref16 = binding.multilevel_roi_align_cpu(f16, rois, sampling_ratio=sr)
            tv_half = torchvision_multilevel(maps16, r, sampling_ratio=sr)  # torchvision's own FP16 (FP16 boxes)
            torch.cuda.synchronize()
            if got16.numel():
                err16 = (got16.float() - want16).abs().max().item()
                err16_ref = float(np.abs(got16.cpu().numpy().astype(np.float32) - ref16.astype(np.float32)).max())
                err_tv_half = (tv_half.float() - want16).abs().max().item()
            else:
                err16 = err16_ref = err_tv_half = 0.0
            assert got16.dtype == torch.float16
            results.append(dict(check=f"CUDA FP16 vs torchvision CUDA fp32: {name}", sampling_ratio=sr,
                                max_abs_err=err16, tol=TOL_FP16, ok=err16 <= TOL_FP16,
                                info_torchvision_fp16_err=err_tv_half))
            results.append(dict(check=f"CUDA FP16 vs CPU reference FP16: {name}", sampling_ratio=sr,
                                max_abs_err=err16_ref, tol=TOL_FP16, ok=err16_ref <= TOL_FP16))
    # Zero ROIs: an empty output, nothing launched.
    maps = [torch.zeros((1, 3, 8 >> i, 8 >> i), device=device) for i in range(5)]
    empty = binding.multilevel_roi_align_cuda(maps, torch.zeros((0, 5), device=device))
    torch.cuda.synchronize()
    results.append(dict(check="CUDA zero ROIs -> [0, C, 14, 14]", sampling_ratio=2, max_abs_err=0.0, tol=0.0,
                        ok=tuple(empty.shape) == (0, 3, 14, 14)))


def level_parity(device) -> dict:
    """Eq. 6 on the device (log2f/sqrtf of CUDA) vs the host, on many random boxes."""
    import torch

    rng = np.random.default_rng(2)
    n = 1_000_000
    xy = rng.uniform(-500, 2000, (n, 2)).astype(np.float32)
    wh = np.exp(rng.uniform(np.log(0.01), np.log(8000), (n, 2))).astype(np.float32)
    rois = np.concatenate([np.zeros((n, 1), np.float32), xy, xy + wh], axis=1)
    b_rois, b_levels = boundary_rois()
    rois = np.concatenate([rois, b_rois])
    host = binding.assign_levels_cpu(rois)
    dev = binding.assign_levels_cuda(torch.from_numpy(rois).to(device)).cpu().numpy()
    mismatch = np.nonzero(host != dev)[0]
    return dict(check="Eq. 6 levels, device vs host", num_rois=len(rois), mismatches=int(len(mismatch)),
                boundary_levels_ok=bool((dev[-len(b_rois):] == b_levels).all()),
                ok=bool(len(mismatch) <= 5 and (dev[-len(b_rois):] == b_levels).all()),
                examples=[rois[i].tolist() for i in mismatch[:5]])


# ------------------------------------------------------------------------------------------------ timing


def torch_multilevel(features, rois, output_size=14, sampling_ratio=2):
    """What the PyTorch model does (maskface.modeling.poolers): levels with torch ops, one roi_align per level."""
    import torch
    from torchvision.ops import roi_align

    boxes = rois[:, 1:]
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0)
    levels = torch.floor(3 + torch.log2(torch.sqrt(area) / 224.0 + 1e-6)).clamp(2, 6).to(torch.int64)
    out = features[0].new_zeros((rois.shape[0], features[0].shape[1], output_size, output_size))
    for i, f in enumerate(features):
        idx = torch.nonzero(levels == 2 + i, as_tuple=True)[0]
        if idx.numel():
            out[idx] = roi_align(f, rois[idx].to(f.dtype), (output_size, output_size), spatial_scale=2.0 ** -(2 + i),
                                 sampling_ratio=sampling_ratio, aligned=True)
    return out


def _time_cuda(fn, iters: int, repeats: int = 5) -> float:
    """Median over `repeats` of the mean milliseconds per call over `iters` back-to-back calls."""
    import torch

    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / iters)
    return float(np.median(samples))


def _device_kernel_us(fn, name_part: str = "mlra_forward_kernel", iters: int = 20) -> float | None:
    """Mean device time of our kernel (microseconds) from the torch profiler (CUPTI), or None."""
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile

        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(iters):
                fn()
            torch.cuda.synchronize()
        times = [e.device_time for e in prof.events() if name_part in e.name and e.device_time > 0]
        return float(np.mean(times)) if times else None
    except Exception as exc:  # profiler unavailable: timings from events only
        log(f"  (profiler unavailable: {exc})")
        return None


def timing(device) -> list[dict]:
    import torch

    rng = np.random.default_rng(3)
    rows = []
    image = (640, 640)
    for dtype_name, dtype in (("FP32", torch.float32), ("FP16", torch.float16)):
        maps = [torch.randn((1, 256, 640 >> l, 640 >> l), device=device, dtype=dtype) for l in range(2, 7)]
        for n in TIMED_ROIS:
            # Face-like boxes: 16..400 px, inside the image (most land on M2..M3, as in the keypoint head).
            size = np.exp(rng.uniform(np.log(16), np.log(400), n)).astype(np.float32)
            x1 = rng.uniform(0, image[1] - size).astype(np.float32)
            y1 = rng.uniform(0, image[0] - size).astype(np.float32)
            rois_np = np.stack([np.zeros(n, np.float32), x1, y1, x1 + size, y1 + size * 1.2], axis=1)
            rois = torch.from_numpy(rois_np).to(device)
            out = torch.empty((n, 256, 14, 14), device=device, dtype=dtype)

            def ours():
                binding.multilevel_roi_align_cuda(maps, rois, out=out)

            def theirs():
                torch_multilevel(maps, rois)

            iters = 200 if n <= 16 else 50
            row = dict(dtype=dtype_name, num_rois=n, channels=256, image=f"{image[0]}x{image[1]}",
                       kernel_ms_per_call=_time_cuda(ours, iters),
                       kernel_device_us=_device_kernel_us(ours),
                       torchvision_multilevel_ms_per_call=_time_cuda(theirs, max(iters // 4, 10)))
            row["speedup"] = row["torchvision_multilevel_ms_per_call"] / row["kernel_ms_per_call"]
            rows.append(row)
            log(f"  {dtype_name} N={n:4d}: kernel {row['kernel_ms_per_call'] * 1e3:8.1f} us/call "
                f"(device {row['kernel_device_us'] or float('nan'):7.1f} us), torchvision multi-level "
                f"{row['torchvision_multilevel_ms_per_call'] * 1e3:8.1f} us/call")
    return rows


# ------------------------------------------------------------------------------------------------ report


def write_report(out_dir: Path, report: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "plugin_check.json").write_text(json.dumps(report, indent=2, default=str))
    lines = [
        "# Multi-level RoIAlign check",
        "",
        f"- mode: **{report['mode']}** ({report['mode_reason']})",
        f"- device: {report['env'].get('device')}",
        f"- torch {report['env'].get('torch')}, torchvision {report['env'].get('torchvision')}, "
        f"nvcc: {report['env'].get('nvcc')}",
        f"- library: `{report['build'].get('library')}` (archs {report['build'].get('archs')}, "
        f"built in {report['build'].get('seconds', float('nan')):.1f} s)",
        f"- overall: **{'PASS' if report['ok'] else 'FAIL'}**",
        "",
        "## Parity (max abs error)",
        "",
        "| check | sampling ratio | max abs err | tol | ok |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in report["parity"]:
        extra = f" (torchvision FP16 itself: {r['info_torchvision_fp16_err']:.3g})" if "info_torchvision_fp16_err" in r else ""
        lines.append(f"| {r['check']}{extra} | {r['sampling_ratio']} | {r['max_abs_err']:.3g} | {r['tol']:g} | "
                     f"{'yes' if r['ok'] else '**NO**'} |")
    if report.get("levels"):
        lv = report["levels"]
        lines += ["", f"Eq. 6 levels on the device vs host: {lv['mismatches']} mismatches in {lv['num_rois']} ROIs; "
                      f"boundary squares {'ok' if lv['boundary_levels_ok'] else 'WRONG'}."]
    if report.get("selftest"):
        st = report["selftest"]
        lines += ["", f"IPluginV3 self-test ({st.get('args')}): {st.get('summary')}"]
    if report.get("timing"):
        lines += ["", "## Timing (640x640 input, C=256, 14x14 output, sampling ratio 2)", "",
                  "| dtype | ROIs | kernel us/call | kernel device us | torchvision multi-level us/call | speedup |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for t in report["timing"]:
            dev = f"{t['kernel_device_us']:.1f}" if t["kernel_device_us"] is not None else "n/a"
            lines.append(f"| {t['dtype']} | {t['num_rois']} | {t['kernel_ms_per_call'] * 1e3:.1f} | {dev} | "
                         f"{t['torchvision_multilevel_ms_per_call'] * 1e3:.1f} | {t['speedup']:.1f}x |")
        lines += ["", "us/call: CUDA events around back-to-back calls from Python (includes the ctypes launch "
                      "overhead); device us: kernel time from the torch profiler."]
    (out_dir / "plugin_check.md").write_text("\n".join(lines) + "\n")


def _env() -> dict:
    env = {"python": platform.python_version(), "host": platform.node()}
    try:
        import torch
        import torchvision

        env.update(torch=torch.__version__, torchvision=torchvision.__version__,
                   cuda_available=torch.cuda.is_available())
        if torch.cuda.is_available():
            env["device"] = torch.cuda.get_device_name(0)
            env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        else:
            env["device"] = "none (CPU only)"
    except ImportError as exc:
        env["torch_error"] = str(exc)
    nvcc = binding.find_nvcc()
    if nvcc:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()
        env["nvcc"] = out[-1] if out else nvcc
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "runs" / "plugin_check"),
                        help="folder for plugin_check.json / .md (default: $OUT, else runs/plugin_check)")
    parser.add_argument("--archs", default=None,
                        help="CUDA archs to build, e.g. 90 or '75;80;86;89;90' (default: this GPU's, else 75)")
    parser.add_argument("--cpu-only", action="store_true", help="skip the GPU part even if a GPU is visible")
    parser.add_argument("--no-timing", action="store_true", help="parity only")
    args = parser.parse_args(argv)
    out_dir = Path(args.out)
    t_start = time.perf_counter()

    env = _env()
    log(f"== plugin_check: device {env.get('device')}, torch {env.get('torch')}, nvcc {env.get('nvcc')}")
    use_gpu = bool(env.get("cuda_available")) and not args.cpu_only
    if args.archs:
        archs = args.archs
    elif use_gpu:
        archs = env["capability"].replace(".", "")
    else:
        archs = os.environ.get("MASKFACE_CUDA_ARCHS", "75")
    report: dict = dict(env=env, build={}, parity=[], levels=None, timing=[], selftest=None, ok=False)

    t0 = time.perf_counter()
    try:
        lib_path = binding.build_library(archs=archs, verbose=True)
    except binding.BuildError as exc:
        log(f"BUILD FAILED: {exc}")
        report.update(mode="failed", mode_reason=f"build failed: {exc}")
        report["build"] = dict(error=str(exc), archs=archs, seconds=time.perf_counter() - t0)
        write_report(out_dir, report)
        return 1
    lib = binding.load_library(lib_path)
    report["build"] = dict(library=str(lib_path), archs=archs, seconds=time.perf_counter() - t0)
    log(f"built {lib_path} for sm_{archs} in {report['build']['seconds']:.1f} s")

    if use_gpu and binding.cuda_device_count(lib) == 0:
        use_gpu = False
        reason = "torch sees a GPU but the library's CUDA runtime does not (driver too old for this nvcc?)"
    elif use_gpu:
        reason = f"CUDA device: {env.get('device')}"
    elif args.cpu_only:
        reason = "--cpu-only given"
    else:
        reason = "no CUDA device visible (torch.cuda.is_available() is False)"
    report["mode"] = "gpu" if use_gpu else "cpu-only"
    report["mode_reason"] = reason
    if not use_gpu:
        log(f"CPU-ONLY MODE: {reason}. Building the library and checking the CPU reference against torchvision; "
            "GPU parity and timings are SKIPPED.")

    log("-- CPU reference vs torchvision (CPU)")
    cpu_parity(report["parity"])

    include = binding.find_tensorrt_include()
    if include is not None:
        try:
            plugin = binding.build_plugin_library(archs=archs, tensorrt_include=include)
            exe = binding.build_plugin_selftest(tensorrt_include=include)
            cmd = [str(exe), str(plugin)] + (["--gpu"] if use_gpu else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:]
            report["selftest"] = dict(args=" ".join(cmd[2:]) or "host only",
                                      tensorrt_headers=binding.tensorrt_header_version(include),
                                      summary=summary, ok=proc.returncode == 0,
                                      failures=[l for l in proc.stdout.splitlines() if l.startswith("FAIL")],
                                      gpu_lines=[l for l in proc.stdout.splitlines() if "enqueue FP" in l])
            log(f"-- IPluginV3 self-test against TensorRT {report['selftest']['tensorrt_headers']} headers: {summary}")
        except (binding.BuildError, subprocess.SubprocessError) as exc:
            report["selftest"] = dict(args="", summary=f"not run: {exc}", ok=False)
    else:
        log("-- TensorRT headers not found: IPluginV3 self-test skipped (carry third_party/TensorRT-*/include to run it)")

    if use_gpu:
        import torch

        device = torch.device("cuda", 0)
        log("-- CUDA kernel vs torchvision (CUDA)")
        gpu_parity(report["parity"], device)
        report["levels"] = level_parity(device)
        log(f"   Eq. 6 levels device vs host: {report['levels']['mismatches']} mismatches")
        if not args.no_timing:
            log("-- timing")
            report["timing"] = timing(device)

    for r in report["parity"]:
        flag = "ok  " if r["ok"] else "FAIL"
        log(f"   {flag} {r['check']} (sr={r['sampling_ratio']}): max abs err {r['max_abs_err']:.3g} (tol {r['tol']:g})")
    ok = all(r["ok"] for r in report["parity"])
    if report["levels"] is not None:
        ok = ok and report["levels"]["ok"]
    if report["selftest"] is not None:
        ok = ok and report["selftest"]["ok"]
    report["ok"] = ok
    report["seconds"] = time.perf_counter() - t_start
    write_report(out_dir, report)
    log(f"== plugin_check {'PASS' if ok else 'FAIL'} ({report['mode']}) in {report['seconds']:.1f} s; "
        f"wrote {out_dir / 'plugin_check.json'} and {out_dir / 'plugin_check.md'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
