"""Quantisation-aware fine-tuning of the INT8 detector's weights, distilled from the FP32 graph (issue 15).

    python export/int8_finetune.py --int8-dir artifacts/onnx_int8 --data runs/demo-data-consensus \
        [--out DIR] [--steps 800] [--images 512] [--lr 0.003] [--biases-only]

The post-training steps of export/quantize_int8.py (equalisation, calibrated ranges, compensated weight
rounding, bias correction) fit each conv on its own; what they leave is how the 8-bit grids of all the
activations add up through the network. Here the INT8 graph itself (export/qdq_torch.QdqGraph: the
runtime's rounding in the forward pass, straight-through gradients in the backward pass) is trained to
reproduce the FP32 graph's outputs on images of the TRAIN split:

* student: detector_int8.onnx; trained: the INT8 weights and INT32 biases of its quantised convs, in
  units of their quantisation step. Scales, zero points, the FP32 layers (detection head, GroupNorms)
  and the graph's structure stay, so the result drops in where detector_int8.onnx was.
* teacher: detector.onnx (FP32) in ONNX Runtime, on the same input.
* loss, per pyramid level (strides 4..64), each term divided by its value on the first images so that
  they start equal:
  - scores: the KL divergence between the student's and the teacher's per-anchor face probability;
  - boxes: the squared box-delta difference times the level's base anchor size squared (a delta times
    the anchor size is pixels), weighted by the teacher's face probability;
  - features: the squared difference of m2..m6 (the keypoint head's inputs) relative to the teacher's
    mean square.
  Each term is summed over the levels and divided by the teacher's total face probability (at least 1,
  so that an image without faces is not blown up).
* Adam, cosine-decayed learning rate, one image per step (each train image, longer side 640 as the
  pipeline prepares it, mirrored at random); the state is saved every --checkpoint-every steps to
  OUT/finetune_state.pt and a rerun with the same arguments resumes from it.
* the loss on 16 held-out TRAIN images (not stepped on) is evaluated every --eval-every steps and
  logged (OUT/finetune_log.jsonl, plotted to finetune_loss.png); the graph written carries the
  parameters of the evaluated step with the lowest held-out loss, the input graph's own when no step
  beat it (integer flips can make the loss worse late in a run: measured below).

Accuracy on the VAL split comes from export/anchor_drift.py and export/precision_report.py on the
written folder.

Measured on the demo model (the shipped INT8 graph: equalised, Percentile ranges, compensated weight
rounding, bias correction; 512 train images + 16 held out, consensus labels; 2-core Zen 5 EPYC, 0.85 s
per step alone, 1.0-1.6 s beside other jobs). Held-out loss in balanced units, start 0.69 / 0.37 / 0.86
(score / box / feature); drift at FP32's own anchors on the 400 VAL images (export/anchor_drift.py, 1,411
detections; ONNX Runtime INT8, OpenVINO INT8 in brackets):

| graph | steps, lr | held-out loss written | box median / p90 / p99 (px) | landmark p99 (px) |
|---|---|---|---|---|
| as quantised (post-training only) | - | - | 0.29 / 0.99 / 2.96 (0.29 / 0.95 / 3.27) | 1.68 (1.48) |
| biases only (`--biases-only`), last step | 600, 0.01 | 0.65 / 0.34 / 0.82 | 0.30 / 0.90 / 2.86 (0.29 / 0.92 / 3.04) | 1.52 (1.60) |
| weights + biases, last step | 1200, 0.003 | 1.30 / 0.59 / 1.52 | 0.31 / 0.98 / 2.88 | 1.98 |
| weights + biases, best held-out step (the defaults) | 800, 0.003 | 0.63 / 0.34 / 0.81 (step 800) | 0.28 / 0.91 / 3.12 (0.28 / 0.93 / 2.87) | 1.65 (1.57) |
| weights + biases, best held-out step, torch on 1 thread | 1600, 0.002 | 0.61 / 0.32 / 0.80 (step 1400) | 0.29 / 0.90 / 2.90 (0.28 / 0.92 / 2.93) | 1.44 (1.59) |

(benchmarks/results/anchor_drift_demo_int8_finetuned_{bias,w3b,long}.md, int8_finetune_demo_{,long_}{summary.json,
log.jsonl}; the 1600-step run's held-out loss rose to 1.53 / 0.71 / 1.81 at step 800, train loss 2.59 -> 3.05,
and came back by step 1000.) The p90 falls by about a tenth; the p99 stays within 2.86-3.27 px, the spread that variants
of the same post-training graph already show (5.5 of docs/DEPLOYMENT.md). The loss is too rugged for
straight-through steps to descend far: in the default run the held-out loss went 0.67 / 0.36 / 0.88 at
step 600, 1.19 / 0.55 / 1.52 at step 700 and 0.63 / 0.34 / 0.81 at step 800, with the learning rate at
4e-4 to 0 steps per iteration by then (0.09 % of the weights differ from the input's at the end); the
1200-step run ended where such a jump left it. Why: the INT8 drift is mostly the network's sensitivity to
where its activations fall on the 8-bit grid, not an offset that parameters can absorb. The same INT8
graph run by ONNX Runtime with and without its graph optimisations (the same integers and scales, sums in
another order, so a few values round the other way) differs at FP32's face anchors (3,907 with score >=
0.5 on 60 val images; max coordinate, original pixels) by median 0.22 / p90 0.89 / p99 2.11 px, half of
INT8 against FP32 (0.41 / 1.44 / 4.18; throw-away script). Descending along the loss's gradient in the
biases alone, on 4 held-out images, gained 3 % at best (a step of 0.3 units), and larger steps lost. Not
used by default: the graph export/quantize_int8.py writes is the served one.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

DETECTOR_FILE, DETECTOR_INT8_FILE = "detector.onnx", "detector_int8.onnx"
STATE_FILE = "finetune_state.pt"
STATE_FORMAT = "2"  # in the fingerprint: a state written in another layout is not resumed
LOG_FILE = "finetune_log.jsonl"
SUMMARY_FILE = "finetune_summary.json"
LEVEL_SUFFIXES = ("", "_1", "_2", "_3", "_4")  # the detection head's conv names per level, strides 4..64
FEATURES = ("m2", "m3", "m4", "m5", "m6")
TERMS = ("score", "box", "feature")
HELD_OUT_IMAGES = 16
BALANCE_IMAGES = 8


def head_outputs() -> list[str]:
    """The tensors the loss reads: per level the score and box-delta conv outputs, then m2..m6."""
    return ([f"/detection_head/cls{s}/Conv_output_0" for s in LEVEL_SUFFIXES]
            + [f"/detection_head/box{s}/Conv_output_0" for s in LEVEL_SUFFIXES] + list(FEATURES))


@dataclass
class FinetuneSettings:
    steps: int = 800
    images: int = 512  # train images stepped on (the held-out ones come after them)
    lr: float = 0.003  # Adam's step, in quantisation steps of a weight
    train_weights: bool = True  # False: only the INT32 biases move (the integers of the weights stay)
    checkpoint_every: int = 100
    eval_every: int = 100  # held-out loss logged to OUT/finetune_log.jsonl
    seed: int = 0
    max_side: int = 640


@dataclass
class FinetuneSummary:
    steps: int
    seconds: float
    weights_changed: float  # fraction of the INT8 weights whose integer changed
    held_out_before: dict = field(default_factory=dict)  # loss terms (balanced units) on the held-out images
    held_out_after: dict = field(default_factory=dict)  # ... of the graph written: the best evaluated step's
    best_step: int = 0  # the step whose parameters were written (0: the input graph's)


def distillation_terms(student: dict, teacher: dict) -> dict:
    """The three loss terms of the module doc (unbalanced), as torch scalars."""
    import torch
    import torch.nn.functional as F

    from maskface.config import AnchorConfig

    score = box = feature = 0.0
    mass = 0.0
    for suffix, anchor_size, m in zip(LEVEL_SUFFIXES, AnchorConfig().sizes, FEATURES):
        cls, box_deltas = f"/detection_head/cls{suffix}/Conv_output_0", f"/detection_head/box{suffix}/Conv_output_0"
        p = torch.sigmoid(teacher[cls])
        entropy = F.binary_cross_entropy(p, p, reduction="sum")
        score = score + F.binary_cross_entropy_with_logits(student[cls], p, reduction="sum") - entropy
        n, a4, h, w = teacher[box_deltas].shape
        difference = (student[box_deltas] - teacher[box_deltas]).reshape(n, a4 // 4, 4, h, w)
        error = (difference ** 2).sum(dim=2)  # [N, A, H, W]
        box = box + (p * error).sum() * anchor_size ** 2
        feature = feature + ((student[m] - teacher[m]) ** 2).mean() / (teacher[m] ** 2).mean().clamp(min=1e-12)
        mass = mass + p.sum()
    mass = torch.clamp(mass, min=1.0)
    return {"score": score / mass, "box": box / mass, "feature": feature / len(FEATURES)}


class Teacher:
    """detector.onnx in ONNX Runtime, answering the tensors of head_outputs()."""

    def __init__(self, fp32_path: Path, threads: int = 0):
        import onnx

        from maskface.runtimes.ort_runtime import ort_session

        model = onnx.load(str(fp32_path))
        del model.graph.output[:]
        for name in head_outputs():
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        self.session = ort_session(model.SerializeToString(), threads or None, quiet=True)

    def __call__(self, image: np.ndarray) -> dict:
        import torch

        values = self.session.run(None, {"images": image})
        return {name: torch.from_numpy(v) for name, v in zip(head_outputs(), values)}


def split_train_records(data, images: int, held_out: int) -> tuple[list, list]:
    """`images` TRAIN records to step on and `held_out` more after them, evenly spaced over the split (all of
    them stepped on, none held out, when the split is that small). Raises quantize_int8.MissingDataError."""
    from export.quantize_int8 import sample_records

    records = sample_records(data, "train", images + held_out)
    if held_out <= 0 or len(records) <= held_out:
        return records, []
    return records[:-held_out], records[-held_out:]


def run_fingerprint(path: Path, settings, records: Sequence, state_format: str = STATE_FORMAT) -> str:
    """What a resumable run's state must match to be resumed: the input file, the state's layout, the
    settings (a dataclass) and the records' images."""
    digest = hashlib.sha256(Path(path).read_bytes())
    digest.update(state_format.encode())
    digest.update(json.dumps(asdict(settings), sort_keys=True).encode())
    digest.update("\n".join(str(r.image_path) for r in records).encode())
    return digest.hexdigest()


def _copy(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _cosine(step: int, steps: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * step / max(steps, 1)))


def finetune(int8_path: Path, fp32_path: Path, out_path: Path, records: Sequence, held_out: Sequence, input_cfg,
             settings: FinetuneSettings, state_path: Path | None = None, progress: bool = True,
             log_path: Path | None = None) -> FinetuneSummary:
    """Fine-tune int8_path's INT8 weights and biases on `records` (module doc) and write the graph to out_path; the
    held-out loss every settings.eval_every steps goes to log_path (JSON lines)."""
    import onnx
    import torch
    from tqdm import tqdm

    from export.qdq_torch import QdqGraph
    from maskface.data.dataset import read_image
    from maskface.preprocess import prepare_image

    if not records:
        raise ValueError("fine-tuning needs train images: none were given")
    model = onnx.load(str(int8_path))
    student = QdqGraph(model, head_outputs())
    if not len(student.weights):
        raise ValueError(f"{int8_path} has no quantised conv weights to fine-tune")
    teacher = Teacher(fp32_path)
    start_weights = {k: v.detach().round().clone() for k, v in student.weights.items()}

    def prepared(record, mirror: bool = False) -> np.ndarray:
        image = read_image(record.image_path, record.source)
        if mirror:
            image = np.ascontiguousarray(image[:, ::-1])
        return prepare_image(image, input_cfg, settings.max_side).image[None].astype(np.float32)

    def terms_on(image: np.ndarray) -> dict:
        targets = teacher(image)
        return distillation_terms(student(torch.from_numpy(image)), targets)

    def held_out_loss(balance: dict) -> dict:
        sums = dict.fromkeys(TERMS, 0.0)
        with torch.no_grad():
            for record in held_out:
                for k, v in terms_on(prepared(record)).items():
                    sums[k] += float(v) / balance[k] / max(len(held_out), 1)
        return sums

    with torch.no_grad():
        first = [terms_on(prepared(r)) for r in records[:BALANCE_IMAGES]]
    balance = {k: max(float(np.mean([float(t[k]) for t in first])), 1e-12) for k in TERMS}
    if not settings.train_weights:
        student.weights.requires_grad_(False)
    trained = (list(student.weights.values()) if settings.train_weights else []) + list(student.biases.values())
    optimizer = torch.optim.Adam(trained, lr=settings.lr)
    fingerprint = run_fingerprint(int8_path, settings, records)
    step, seconds, running = 0, 0.0, None  # running: the train loss's moving average
    before = None
    best_step, best_held_out, best_params = 0, {}, {}  # the evaluated step with the lowest held-out loss
    if state_path is not None and state_path.is_file():
        state = torch.load(state_path, weights_only=True)
        if state.get("fingerprint") == fingerprint:
            student.load_state_dict(state["student"])
            optimizer.load_state_dict(state["optimizer"])
            step, seconds, balance = int(state["step"]), float(state["seconds"]), dict(state["balance"])
            before = dict(state["held_out_before"])
            running = float(state["running"]) if step else None
            best_step, best_held_out = int(state["best_step"]), dict(state["best_held_out"])
            best_params = dict(state["best_params"])
            print(f"int8_finetune: resuming at step {step} from {state_path}")
        else:
            print(f"int8_finetune: {state_path} is from other inputs or settings; starting over")
    if before is None:
        before = held_out_loss(balance)
        best_held_out, best_params = before, _copy(student)
    if log_path is not None and held_out:  # drop what was logged after the state resumed from
        kept = [line for line in (log_path.read_text().splitlines() if log_path.is_file() else [])
                if json.loads(line)["step"] <= step]
        if not step:
            kept = [json.dumps({"step": 0, "lr": settings.lr, "train_loss": None, "held_out": before})]
        log_path.write_text("".join(line + "\n" for line in kept))

    def save_state() -> None:
        if state_path is None:
            return
        tmp = state_path.with_suffix(".tmp")
        torch.save({"fingerprint": fingerprint, "student": student.state_dict(), "optimizer": optimizer.state_dict(),
                    "step": step, "seconds": seconds, "balance": balance, "held_out_before": before,
                    "running": running or 0.0,
                    "best_step": best_step, "best_held_out": best_held_out, "best_params": best_params}, tmp)
        tmp.replace(state_path)

    rng = np.random.default_rng(settings.seed)
    order = [rng.permutation(len(records)) for _ in range(math.ceil(settings.steps / len(records)))]
    mirrors = rng.random(settings.steps) < 0.5
    bar = tqdm(total=settings.steps, initial=step, desc="int8 fine-tune", dynamic_ncols=True, disable=not progress)
    while step < settings.steps:
        began = time.perf_counter()
        record = records[order[step // len(records)][step % len(records)]]
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * _cosine(step, settings.steps)
        terms = terms_on(prepared(record, bool(mirrors[step])))
        loss = sum(terms[k] / balance[k] for k in TERMS)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        seconds += time.perf_counter() - began
        running = float(loss.detach()) if running is None else 0.98 * running + 0.02 * float(loss.detach())
        bar.update(1)
        bar.set_postfix(loss=f"{running:.3f}")
        if held_out and (step % settings.eval_every == 0 or step == settings.steps):
            now = held_out_loss(balance)
            if sum(now.values()) < sum(best_held_out.values()):
                best_step, best_held_out, best_params = step, now, _copy(student)
            if log_path is not None:
                with open(log_path, "a") as log:
                    log.write(json.dumps({"step": step, "lr": settings.lr * _cosine(step, settings.steps),
                                          "train_loss": running, "held_out": now}) + "\n")
        if step % settings.checkpoint_every == 0 or step == settings.steps:
            save_state()
    bar.close()
    if held_out:  # write the best evaluated step's parameters (the input's when no step beat it)
        student.load_state_dict(best_params)
        after = best_held_out
    else:
        best_step, after = step, held_out_loss(balance)
    changed = sum(int((student.weights[k].detach().round().clamp(-127, 127) != start_weights[k].clamp(-127, 127)).sum())
                  for k in start_weights)
    total = sum(v.numel() for v in start_weights.values())
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".onnx.tmp")
    onnx.save(student.to_onnx(model), str(tmp))
    tmp.replace(out_path)
    return FinetuneSummary(step, seconds, changed / total, before, after, best_step)


def plot_log(log_path: Path, out_path: Path) -> Path | None:
    """The held-out loss terms over the steps (the log's lines); None without matplotlib or a log."""
    try:
        import matplotlib  # noqa: F401  (optional: the summary is complete without the plot)
    except ImportError:
        return None
    if not log_path.is_file():
        return None
    from maskface.evaluation.plots import _new_figure, _save

    rows = [json.loads(line) for line in log_path.read_text().splitlines()]
    if not rows:
        return None
    fig = _new_figure()
    ax = fig.add_subplot(1, 1, 1)
    steps = [r["step"] for r in rows]
    for term in TERMS:
        ax.plot(steps, [r["held_out"][term] for r in rows], marker="o", label=term)
    ax.axhline(1.0, color="grey", ls="--", label="first images (balance)")
    ax.set_xlabel("step")
    ax.set_ylabel("held-out loss (balanced units)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _save(fig, out_path)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--int8-dir", required=True, help="folder with detector_int8.onnx and detector.onnx "
                                                     "(export/quantize_int8.py's --out)")
    p.add_argument("--data", default="runs/demo-data", help="demo data folder (its TRAIN split is used)")
    p.add_argument("--out", default=None, help="folder to write (default: INT8_DIR/finetuned); the other graphs "
                                              "of INT8_DIR are copied beside the fine-tuned detector_int8.onnx")
    p.add_argument("--config", default="demo", help="model config whose input preprocessing to use")
    defaults = FinetuneSettings()
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--images", type=int, default=defaults.images)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--biases-only", action="store_true", help="train only the INT32 biases of the quantised convs")
    p.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    p.add_argument("--eval-every", type=int, default=defaults.eval_every,
                   help="log the held-out loss every N steps to OUT/finetune_log.jsonl")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    for name in ("steps", "images", "checkpoint_every", "eval_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if not args.lr > 0:
        p.error("--lr must be positive")
    return args


def main(argv=None) -> int:
    import torch

    from export.quantize_int8 import MissingDataError
    from maskface.config import get_config

    args = parse_args(argv)
    source = Path(args.int8_dir)
    for name in (DETECTOR_FILE, DETECTOR_INT8_FILE):
        if not (source / name).is_file():
            print(f"int8_finetune: {source / name} not found: write the INT8 folder first with "
                  f"`python export/quantize_int8.py --out {source}`", file=sys.stderr)
            return 2
    out = Path(args.out) if args.out else source / "finetuned"
    if out.resolve() == source.resolve():
        print("int8_finetune: --out must differ from --int8-dir (the FP32 teacher's INT8 graph is read from there)",
              file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = FinetuneSettings(steps=args.steps, images=args.images, lr=args.lr, train_weights=not args.biases_only,
                                checkpoint_every=args.checkpoint_every, eval_every=args.eval_every, seed=args.seed)
    try:
        train, held_out = split_train_records(args.data, settings.images, HELD_OUT_IMAGES)
    except MissingDataError as e:
        print(f"int8_finetune: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.is_file() and item.suffix in (".onnx", ".json") and item.name != SUMMARY_FILE:
            shutil.copy2(item, out / item.name)
    summary = finetune(source / DETECTOR_INT8_FILE, source / DETECTOR_FILE, out / DETECTOR_INT8_FILE, train, held_out,
                       get_config(args.config).input, settings, out / STATE_FILE, progress=not args.no_progress,
                       log_path=out / LOG_FILE)
    report = {"int8_dir": str(source), "data": str(args.data), "settings": asdict(settings),
              "train_images": len(train), "held_out_images": len(held_out),
              **asdict(summary)}
    (out / SUMMARY_FILE).write_text(json.dumps(report, indent=2))
    plot_log(out / LOG_FILE, out / "finetune_loss.png")
    print(f"int8_finetune: {summary.steps} steps in {summary.seconds:.0f} s; "
          f"{100 * summary.weights_changed:.1f} % of the INT8 weights changed; held-out loss "
          + ", ".join(f"{k} {summary.held_out_before[k]:.3f} -> {summary.held_out_after[k]:.3f}" for k in TERMS)
          + f"; wrote {out / DETECTOR_INT8_FILE} (the parameters of step {summary.best_step})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
