"""The latency benchmark's report: markdown tables (our rows, the paper's Table 7, ratios) and the chart."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

BACKBONE_NAMES = {"demo": "MobileNetV2 demo (trained)", "r50": "ResNet-50", "mbv2": "MobileNetV2", "rx101": "ResNeXt-101 32x8d",
                  "rx152": "ResNeXt-152 32x8d"}


# ------------------------------------------------------------------------------------------------ reports

#: Stages whose per-run times a row keeps (runs_ms) so that two backends of one run can be paired.
PAIRED_STAGES = ("detector", "e2e", "pipeline")
CI_LEVEL = 0.90
BOOTSTRAP_RESAMPLES = 2000


def _fmt(v: float | None, digits: int | None = None) -> str:
    if v is None:
        return "n/a"
    if digits is None:
        digits = 2 if abs(v) < 10 else 1 if abs(v) < 1000 else 0
    return f"{v:.{digits}f}"


def _paired(p: dict[str, Any] | None) -> str:
    return "n/a" if p is None else f"{p['median']:.2f} [{p['low']:.2f}-{p['high']:.2f}]"


def _verdict(goal: dict[str, Any] | None) -> str:
    if goal is None:
        return "-"
    text = f"{goal['stage']} <= {goal['at_most']:.2f}x: " + {True: "met", False: "NOT met", None: "n/a"}[goal["met"]]
    return text + (" (within noise)" if goal.get("decided") is False else "")


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ONNX Runtime / PyTorch FP32 time ratios for the same backbone, size and device (> 1: ORT slower)."""
    out = []
    for ort_row in (r for r in rows if r["backend"] == "onnxruntime"):
        for ref in rows:
            if ref["backend"] == "torch-fp32" and (ref["backbone"], ref["size"]) == (ort_row["backbone"], ort_row["size"]):
                item = {"backbone": ort_row["backbone"], "size": ort_row["size"], "numerator": "onnxruntime",
                        "denominator": "torch-fp32"}
                for stage in ("detector_ms", "nms_ms", "e2e_ms"):
                    item[stage.replace("_ms", "")] = ort_row[stage]["median"] / ref[stage]["median"]
                f = max(ort_row["keypoints"], key=int)
                item[f"keypoints_{f}"] = (ort_row["keypoints"][f]["total_ms"]["median"]
                                          / ref["keypoints"][f]["total_ms"]["median"])
                out.append(item)
    return out


def paired_ratio(runs: list[float] | None, reference_runs: list[float] | None, seed: int = 0) -> dict[str, Any] | None:
    """Median of the per-round ratios runs[i] / reference_runs[i] with a bootstrap CI_LEVEL interval
    (rounds resampled with replacement, seeded). Round i of two interleaved backends ran side by side,
    so a slow spell of the machine divides out of each ratio; the interval says how far this run's
    rounds let the median move. None unless both lists hold the same number (>= 2) of runs."""
    if not runs or not reference_runs or len(runs) != len(reference_runs) or len(runs) < 2:
        return None
    r = np.asarray(runs, np.float64) / np.asarray(reference_runs, np.float64)
    picks = np.random.default_rng(seed).integers(0, r.size, size=(BOOTSTRAP_RESAMPLES, r.size))
    medians = np.median(r[picks], axis=1)
    tail = (1 - CI_LEVEL) / 2
    return {"median": float(np.median(r)), "low": float(np.quantile(medians, tail)),
            "high": float(np.quantile(medians, 1 - tail)), "level": CI_LEVEL, "rounds": int(r.size)}


def goal_verdict(value: float | None, paired: dict[str, Any] | None, bound: float) -> dict[str, Any]:
    """`met` from the ratio of medians; `decided` False when the paired interval holds the bound, i.e.
    this run's noise could put the ratio on either side of it."""
    met = None if value is None else value <= bound
    decided = None if paired is None else (paired["high"] <= bound or paired["low"] > bound)
    return {"at_most": bound, "met": met, "decided": decided}


def vs_onnxruntime_fp32(rows: list[dict[str, Any]], goals: dict[str, tuple[str, float]]) -> list[dict[str, Any]]:
    """Every other row's time / the ONNX Runtime FP32 row of the same backbone and size (one run, so the
    rows were interleaved), per stage: the ratio of medians, and the paired per-round ratio with its
    interval (paired_ratio); with the goal of that backend where one is set (< 1: faster)."""
    out = []
    for ref in (r for r in rows if r["backend"] == "onnxruntime"):
        for row in rows:
            if row is ref or (row["backbone"], row["size"]) != (ref["backbone"], ref["size"]):
                continue
            item = {"backbone": row["backbone"], "size": row["size"], "backend": row["backend"],
                    "precision": row["precision"]}
            for stage in ("detector", "e2e", "pipeline"):
                a, b = row.get(f"{stage}_ms"), ref.get(f"{stage}_ms")
                item[stage] = a["median"] / b["median"] if a and b else None
                # rounds pair up only when the backends took turns (--no-interleave runs them one after another)
                interleaved = row.get("interleaved", True) and ref.get("interleaved", True)
                item[f"{stage}_paired"] = paired_ratio(row.get("runs_ms", {}).get(stage),
                                                       ref.get("runs_ms", {}).get(stage)) if interleaved else None
            item["detector_gflops_effective"] = row["gflops_achieved"]["detector"]
            if row["backend"] in goals:
                stage, bound = goals[row["backend"]]
                item["goal"] = {"stage": stage} | goal_verdict(item[stage], item[f"{stage}_paired"], bound)
            out.append(item)
    return out


def to_markdown(report: dict[str, Any]) -> str:
    env, rows = report["environment"], report["rows"]
    faces = report["settings"]["faces"]
    trained = {r["trained"] for r in rows}
    lines = [
        "# MaskFace latency (benchmarks/latency.py)",
        "",
        f"- Device: **{env['device_name']}** (`--device {env['device']}`)"
        + (f"; host CPU: {env['cpu']}" if env.get("gpu") else "")
        + f"; threads: {env['threads']} of {env['cpu_available']} available CPUs",
        f"- Software: torch {env['torch']}, onnxruntime {env.get('onnxruntime') or 'not installed'}, "
        f"Python {env['python']}" + (f", CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}" if env.get("gpu") else ""),
        f"- Weights: {'trained (--checkpoint)' if trained == {True} else 'seeded initialisation, untrained' if trained == {False} else 'mixed'}"
        " (timings do not depend on the weight values, except the number of faces NMS keeps)",
        f"- {report['settings']['runs']} timed runs after {report['settings']['warmup']} warm-up runs; batch 1; "
        "times in ms, median / p90",
        "- e2e = detector + NMS + keypoint head for E faces, chained; preprocessing EXCLUDED "
        "(reported separately below)",
        f"- Peak (the % peak columns divide by it): {env['peak']['formula']}",
        *([f"- For comparison only, an ESTIMATE from the clock: {env['peak_estimate']['formula']}"]
          if env.get("peak_estimate") else []),
        f"- Created {report['created']} by `{report['command']}`",
        "",
        "## Our rows",
        "",
    ]
    if not report.get("complete", True):
        lines[-2:-2] = ["**PARTIAL: the run has not finished (or was cut short); rows so far only.**", ""]
    head = (["backbone", "image (input)", "backend", "precision", "device", "threads", "detector", "NMS [kept]",
             "NMS all candidates [kept/of]"] + [f"kp ms/face @{f}" for f in faces]
            + ["e2e [E faces]", "pipeline (JPEG in)", "detector GFLOP/s", "detector % of measured peak", "e2e GFLOP/s"])
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in rows:
        cells = [
            r["backbone_name"], f"{r['size']} ({r['input_hw'][1]}x{r['input_hw'][0]})", r["backend"], r["precision"],
            r["device_kind"], str(r["threads"]),
            f"{_fmt(r['detector_ms']['median'])} / {_fmt(r['detector_ms']['p90'])}",
            f"{_fmt(r['nms_ms']['median'], 3)} / {_fmt(r['nms_ms']['p90'], 3)} [{r['nms_kept']}]",
            f"{_fmt(r['nms_full_ms']['median'], 3)} / {_fmt(r['nms_full_ms']['p90'], 3)} "
            f"[{r['nms_full_kept']}/{r['nms_full_candidates']}]",
        ]
        for f in faces:
            v = r["keypoints"][str(f)]["per_face_ms"]
            cells.append(f"{_fmt(v['median'], 3)} / {_fmt(v['p90'], 3)}")
        pipe = r.get("pipeline_ms")
        cells += [f"{_fmt(r['e2e_ms']['median'])} / {_fmt(r['e2e_ms']['p90'])} [{r['e2e_faces']}]",
                  f"{_fmt(pipe['median'])} / {_fmt(pipe['p90'])}" if pipe else "n/a",
                  _fmt(r["gflops_achieved"]["detector"], 1), _pct(r["peak_fraction"]["detector"]),
                  _fmt(r["gflops_achieved"]["e2e"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    if not rows:
        lines.append("| (no backend ran) |" + " |" * (len(head) - 1))

    lines += ["", "## Side by side with the paper's Table 7", "",
              "| source | method | backbone | precision | hardware | image | ms / image | keypoint head ms / face |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f1 = r["keypoints"][str(max(faces, key=int))]["per_face_ms"]["median"]
        lines.append(f"| ours ({r['backend']}) | MaskFace | {r['backbone_name']} | {r['precision']} | {r['device_name']} "
                     f"| {r['size']} | {_fmt(r['e2e_ms']['median'])} (e2e, {r['e2e_faces']} faces) "
                     f"| {_fmt(f1, 3)} (@{max(faces)}) |")
    for p in report["paper_table7"]:
        per_image = _fmt(p["ms"]) if p["unit"] == "ms / image" else "-"
        per_face = _fmt(p["ms"], 2) if p["unit"] == "ms / face" else "-"
        lines.append(f"| paper Table 7 | {p['method']} | {p['backbone']} | (not stated) | {p['hardware']} | "
                     f"{p['input']} | {per_image} | {per_face} |")

    lines += ["", "## Work and rates", "", "| backbone | image | detector GFLOP | keypoint GFLOP / face | preprocess ms (median) |",
              "|---|---|---|---|---|"]
    seen = set()
    for r in rows:
        if (r["backbone"], r["size"]) in seen:
            continue
        seen.add((r["backbone"], r["size"]))
        pre = report["preprocess_ms"].get(r["size"]) or {}  # None: no OpenCV to decode the JPEG
        lines.append(f"| {r['backbone_name']} | {r['size']} | {_fmt(r['gflop']['detector'], 1)} | "
                     f"{_fmt(r['gflop']['keypoint_per_face'], 3)} | {_fmt(pre.get('median'))} |")
    if report["ratios"]:
        lines += ["", "## ONNX Runtime / PyTorch FP32 (time ratio, > 1 means ONNX Runtime is slower)", "",
                  "| backbone | image | detector | NMS | keypoints (largest F) | e2e |", "|---|---|---|---|---|---|"]
        for q in report["ratios"]:
            kpk = next(k for k in q if k.startswith("keypoints_"))
            lines.append(f"| {BACKBONE_NAMES.get(q['backbone'], q['backbone'])} | {q['size']} | {q['detector']:.2f} | "
                         f"{q['nms']:.2f} | {q[kpk]:.2f} ({kpk.split('_')[1]} faces) | {q['e2e']:.2f} |")
    if report.get("vs_onnxruntime_fp32"):
        lines += ["", "## Time ratio to ONNX Runtime FP32 (same run, interleaved; < 1 means faster)", "",
                  f"Ratio of medians; `paired` is the median of per-round ratios with its {CI_LEVEL:.0%} bootstrap "
                  "interval. A goal whose interval holds the bound is *within noise*: this run cannot tell.", "",
                  "| backbone | image | backend | precision | detector | detector paired | e2e | pipeline | "
                  "pipeline paired | detector GFLOP/s (FP32 work) | goal |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for q in report["vs_onnxruntime_fp32"]:
            lines.append(f"| {BACKBONE_NAMES.get(q['backbone'], q['backbone'])} | {q['size']} | {q['backend']} | "
                         f"{q['precision']} | {_fmt(q['detector'])} | {_paired(q.get('detector_paired'))} | "
                         f"{_fmt(q['e2e'])} | {_fmt(q['pipeline'])} | {_paired(q.get('pipeline_paired'))} | "
                         f"{_fmt(q['detector_gflops_effective'], 1)} | {_verdict(q.get('goal'))} |")
    if report["skipped"]:
        lines += ["", "## Skipped", ""]
        lines += [f"- {s['backbone']} / {s['backend']}: {s['reason']}" for s in report["skipped"]]
    notes = [n for r in rows for n in r.get("notes", [])]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in dict.fromkeys(notes)]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = report["rows"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 6), gridspec_kw={"width_ratios": [3, 2]})
    # Grouped bars, one per stage and the end-to-end total, on a log axis: stacking segments on a
    # log scale would hide the small ones (NMS) and misstate each segment's share.
    stages = (("detector", "detector_ms", "#3b75af"), ("NMS", "nms_ms", "#ef8636"),
              ("keypoint head (E faces)", "e2e_keypoints_ms", "#519e3e"), ("end to end", "e2e_ms", "#7f3fbf"))
    labels = [f"ours {r['backbone']} {r['size']}\n{r['backend']}\n{r['device_kind']}" for r in rows]
    paper = [p for p in report["paper_table7"] if p["unit"] == "ms / image"]
    labels += [f"paper {p['method']}\n{p['backbone']}\n{p['hardware'].replace('NVIDIA ', '')}" for p in paper]
    width = 0.8 / len(stages)
    heights = []
    for k, (name, key, colour) in enumerate(stages):
        values = [r[key]["median"] for r in rows]
        xs = np.arange(len(rows)) + (k - (len(stages) - 1) / 2) * width
        ax1.bar(xs, values, width, color=colour, label=name)
        for x, v in zip(xs, values):
            ax1.text(x, v, f"{v:.3g}", ha="center", va="bottom", fontsize=6, rotation=90)
        heights += values
    px = np.arange(len(rows), len(rows) + len(paper))
    ax1.bar(px, [p["ms"] for p in paper], width, color="#aaaaaa", hatch="//", label="paper Table 7 (per image)")
    heights += [p["ms"] for p in paper]
    ax1.set_xticks(np.arange(len(labels)))
    ax1.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax1.set_yscale("log")
    positive = [v for v in heights if v > 0]
    if positive:
        ax1.set_ylim(min(positive) / 3, max(positive) * 4)
    ax1.set_ylabel("ms per image (median, log scale; bars side by side, not stacked)")
    ax1.set_title("Per-image latency by stage (preprocessing excluded)")
    ax1.legend(fontsize=8)
    faces = report["settings"]["faces"]
    for r in rows:
        ax2.plot(faces, [r["keypoints"][str(f)]["per_face_ms"]["median"] for f in faces], marker="o",
                 label=f"{r['backbone']} {r['size']} {r['backend']}")
    ax2.axhline(0.11, color="#777777", linestyle="--", label="paper: 0.11 ms/face (2080 Ti)")
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set_xlabel("faces per call")
    ax2.set_ylabel("keypoint head ms per face (median)")
    ax2.set_title("Keypoint head")
    ax2.legend(fontsize=7)
    env = report["environment"]
    fig.suptitle(f"MaskFace latency on {env['device_name']} ({env['threads']} threads; "
                 f"{'trained' if all(r['trained'] for r in rows) and rows else 'untrained'} weights)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj
