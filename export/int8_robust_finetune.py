"""Fine-tuning the FP32 model itself to be less sensitive to its activations' 8-bit grid (issue 15).

    python export/int8_robust_finetune.py --data runs/demo-data-consensus --out runs/int8_robust \
        [--checkpoint PATH] [--steps 1000] [--lr 3e-5] [--images 512]
    -> OUT/model_final.pth (maskface.checkpoint.load_model reads it), OUT/robust_log.jsonl,
       OUT/robust_state.pt (a rerun with the same arguments resumes from it; also written on SIGTERM / Ctrl-C)

export/int8_finetune.py trains the INT8 graph's integers toward a FIXED FP32 graph and did not move the
p99 of the drift: the same INT8 graph summed in another order already differs from itself by about 2 px
at p99, which pointed at the network's sensitivity to where its activations fall on the grid. This
script tests that by changing the sensitivity: a copy of the model (the student) sees, at the input of every conv of
backbone, FPN and context modules (the activations export/quantize_int8.py quantises), its activation
clipped to a calibrated uint8 range plus uniform noise of one quantisation step (rounding's error,
without rounding's zero gradient). It is trained so that both its noisy and its clean outputs match the
original model (the teacher, frozen): per level the score and box-delta maps and m2..m6, with
export/int8_finetune.distillation_terms, each term divided by its noisy value on the first images. The
clean term keeps the FP32 function where it was; the noisy term makes it one that 8-bit activations
move less. The keypoint head is not trained (its inputs, m2..m6, are held by the feature term).

The result is another model: quantise it with `export/quantize_int8.py --checkpoint OUT/model_final.pth`
and measure its INT8 graph against its own FP32 with `export/anchor_drift.py --checkpoint ...`, and
its FP32 against the labels with `maskface demo-eval`.

Measured on the demo model (the defaults: 1,000 steps, 512 train images + 8 held out, consensus data; 1,714 s
on the 2-core AVX2 EPYC; benchmarks/results/int8_robust_finetune_demo_*, anchor_drift_demo_int8_robust_finetune.md):

* held-out loss (balanced units), noisy: score 0.92 -> 0.51, box 0.52 -> 0.22, feature 1.00 -> 0.53; clean
  (the FP32 function's move): 0.079 / 0.035 / 0.073. The network did become less sensitive to the noise, and to
  its input: under +-1 grey level its boxes move 0.09 / 0.31 / 0.89 px (median / p90 / p99; shipped model 0.10 /
  0.40 / 1.06), on faces < 64 px 0.38 px p99 against 0.80.
* its FP32 against the labels (maskface demo-eval, 400 val images): AP50 0.988, recall 0.974 at 0.120 FP per
  image, NME 0.0659 (shipped: 0.989, 0.975, 0.128, 0.0656); against the shipped FP32 at its anchors boxes move
  0.24 / 0.82 / 2.56 px.
* its INT8 graph (export/quantize_int8.py, reduced range) against its own FP32 at its anchors: ONNX Runtime 0.30 /
  0.97 / 3.20 px, landmark p99 1.51; OpenVINO 0.30 / 0.95 / 3.30, 1.48 (shipped model: 0.30 / 1.00 / 3.20, 1.71;
  0.30 / 1.01 / 2.89, 1.57). The box p99 did not move.

So the drift's tail is not the network's sensitivity to rounding noise: export/int8_error_sources.py finds it in
the clipping of activations to their calibrated ranges (docs/DEPLOYMENT.md 5.5). Not used by default.
"""
from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

STATE_FILE, LOG_FILE, FINAL_FILE = "robust_state.pt", "robust_log.jsonl", "model_final.pth"
STATE_FORMAT = "1"
QUANTISED_PARTS = ("backbone", "fpn", "context")  # the modules whose conv inputs the INT8 graph quantises
TRAINED_PARTS = QUANTISED_PARTS + ("detection_head",)
TERMS = ("score", "box", "feature")
RANGE_QUANTILE = 1e-4  # each conv input's range: its (q, 1 - q) quantiles, as a Percentile calibration
RANGE_SAMPLES = 200_000  # values drawn per tensor for the quantiles
HELD_OUT_IMAGES = 8


def pyramid_outputs(model, images) -> dict:
    """The tensors export/int8_finetune.head_outputs() names, from the PyTorch model: per level the
    detection head's score and box-delta conv outputs, then m2..m6."""
    from export.int8_finetune import FEATURES, LEVEL_SUFFIXES

    features = model.context_features(images)
    out = {}
    for suffix, f in zip(LEVEL_SUFFIXES, features):
        out[f"/detection_head/cls{suffix}/Conv_output_0"] = model.detection_head.cls(f)
        out[f"/detection_head/box{suffix}/Conv_output_0"] = model.detection_head.box(f)
    out.update(zip(FEATURES, features))
    return out


def quantised_convs(model) -> list:
    """(name, conv) of every Conv2d in QUANTISED_PARTS, in module order."""
    import torch.nn as nn

    return [(f"{part}.{name}".rstrip("."), m) for part in QUANTISED_PARTS
            for name, m in getattr(model, part).named_modules() if isinstance(m, nn.Conv2d)]


def uint8_range(values, quantile: float = RANGE_QUANTILE) -> tuple[float, float]:
    """(low, high) of a uint8 grid for `values`: their (q, 1 - q) quantiles, widened to hold 0 (the grid's
    zero point must be representable, as in ONNX's QuantizeLinear)."""
    import torch

    v = values.detach().reshape(-1).float()
    if v.numel() > RANGE_SAMPLES:
        v = v[torch.randint(0, v.numel(), (RANGE_SAMPLES,), generator=torch.Generator().manual_seed(0))]
    low, high = torch.quantile(v, torch.tensor([quantile, 1.0 - quantile])).tolist()
    return min(low, 0.0), max(high, 0.0)


class ActivationNoise:
    """Forward pre-hooks on quantised_convs(model): when `enabled`, each conv's input is clipped to its
    calibrated range and given uniform noise of one step, (high - low) / 255, centred on 0."""

    def __init__(self, model, ranges: dict[str, tuple[float, float]] | None = None):
        self.enabled = False
        self.ranges = dict(ranges or {})
        self._recording: dict[str, list] | None = None
        self._handles = [conv.register_forward_pre_hook(self._hook(name)) for name, conv in quantised_convs(model)]
        self.names = [name for name, _ in quantised_convs(model)]

    def _hook(self, name: str):
        def hook(module, inputs):
            (x,) = inputs
            if self._recording is not None:
                self._recording.setdefault(name, []).append(uint8_range(x))
            if not self.enabled:
                return None
            low, high = self.ranges[name]
            step = (high - low) / 255.0
            import torch

            return (x.clamp(low, high) + (torch.rand_like(x) - 0.5) * step,)
        return hook

    def calibrate(self, model, images: Sequence) -> dict[str, tuple[float, float]]:
        """Each conv input's range, the mean over `images` ([1, 3, H, W] tensors) of uint8_range."""
        import torch

        self._recording, enabled, self.enabled = {}, self.enabled, False
        try:
            with torch.no_grad():
                for image in images:
                    model.context_features(image)
            self.ranges = {name: tuple(float(np.mean([r[i] for r in seen])) for i in (0, 1))
                           for name, seen in self._recording.items()}
        finally:
            self._recording, self.enabled = None, enabled
        return self.ranges

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@dataclass
class RobustSettings:
    steps: int = 1000
    images: int = 512
    lr: float = 3e-5  # Adam, cosine-decayed to 0
    calibration_images: int = 16
    checkpoint_every: int = 50
    eval_every: int = 100
    seed: int = 0
    max_side: int = 640


class _StopRequest:
    """SIGTERM / SIGINT set a flag; the loop saves its state and returns (nothing is lost on a stop)."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def robust_finetune(checkpoint: Path, out: Path, records: Sequence, held_out: Sequence, settings: RobustSettings,
                    progress: bool = True) -> dict:
    """Train a copy of `checkpoint`'s model as the module doc says; returns the summary written beside it."""
    import copy

    import torch
    from tqdm import tqdm

    from export.int8_finetune import distillation_terms, run_fingerprint
    from maskface.checkpoint import atomic_torch_save, load_model, save_checkpoint
    from maskface.data.dataset import read_image
    from maskface.io_utils import atomic_write_json
    from maskface.preprocess import prepare_image

    if len(records) < settings.calibration_images:
        raise ValueError(f"robust fine-tuning needs at least {settings.calibration_images} train images, "
                         f"got {len(records)}")
    out.mkdir(parents=True, exist_ok=True)
    teacher = load_model(checkpoint)
    teacher.requires_grad_(False)
    student = copy.deepcopy(teacher)
    student.requires_grad_(False)
    for part in TRAINED_PARTS:
        getattr(student, part).requires_grad_(True)
    trained = [p for p in student.parameters() if p.requires_grad]
    noise = ActivationNoise(student)
    input_cfg = teacher.cfg.input

    def image_of(record, mirror: bool = False) -> torch.Tensor:
        image = read_image(record.image_path, record.source)
        if mirror:
            image = np.ascontiguousarray(image[:, ::-1])
        return torch.from_numpy(prepare_image(image, input_cfg, settings.max_side).image[None].astype(np.float32))

    def terms(image: torch.Tensor) -> dict:
        """{'noisy': terms, 'clean': terms} of the student against the teacher on one image."""
        with torch.no_grad():
            target = pyramid_outputs(teacher, image)
        result = {}
        for mode in ("noisy", "clean"):
            noise.enabled = mode == "noisy"
            result[mode] = distillation_terms(pyramid_outputs(student, image), target)
        noise.enabled = False
        return result

    def held_out_loss(balance: dict) -> dict:
        sums = {f"{mode}_{k}": 0.0 for mode in ("noisy", "clean") for k in TERMS}
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(settings.seed + 1)  # the same noise draws at every evaluation; training's go on
            for record in held_out:
                for mode, values in terms(image_of(record)).items():
                    for k, v in values.items():
                        sums[f"{mode}_{k}"] += float(v) / balance[k] / max(len(held_out), 1)
        return sums

    optimizer = torch.optim.Adam(trained, lr=settings.lr)
    fingerprint = run_fingerprint(checkpoint, settings, records, STATE_FORMAT)
    state_path, log_path = out / STATE_FILE, out / LOG_FILE
    step, seconds, before = 0, 0.0, None
    if state_path.is_file():
        state = torch.load(state_path, weights_only=True)
        if state.get("fingerprint") == fingerprint:
            student.load_state_dict(state["student"])
            optimizer.load_state_dict(state["optimizer"])
            noise.ranges = {k: tuple(v) for k, v in state["ranges"].items()}
            step, seconds = int(state["step"]), float(state["seconds"])
            balance, before = dict(state["balance"]), dict(state["held_out_before"])
            torch.set_rng_state(state["torch_rng"])
        else:
            print(f"int8_robust_finetune: {state_path} is from other settings or data; starting over", file=sys.stderr)
    if step == 0:
        torch.manual_seed(settings.seed)
        noise.calibrate(student, [image_of(r) for r in records[:settings.calibration_images]])  # = the teacher yet
        with torch.no_grad():
            first = [terms(image_of(r))["noisy"] for r in records[:settings.calibration_images]]
        balance = {k: max(float(np.mean([float(t[k]) for t in first])), 1e-12) for k in TERMS}
        before = held_out_loss(balance)
        log_path.unlink(missing_ok=True)

    def save_state() -> None:
        atomic_torch_save({"fingerprint": fingerprint, "student": student.state_dict(),
                           "optimizer": optimizer.state_dict(), "ranges": {k: list(v) for k, v in noise.ranges.items()},
                           "step": step, "seconds": seconds, "balance": balance, "held_out_before": before,
                           "torch_rng": torch.get_rng_state()}, state_path)

    def log(entry: dict) -> None:
        with open(log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    rng = np.random.default_rng(settings.seed)
    order = [rng.permutation(len(records)) for _ in range(settings.steps // len(records) + 1)]
    order = np.concatenate(order)
    running = None
    with _StopRequest() as stop, tqdm(total=settings.steps, initial=step, desc="robust fine-tune",
                                      dynamic_ncols=True, disable=not progress) as bar:
        while step < settings.steps and not stop.requested:
            started = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = settings.lr * 0.5 * (1.0 + math.cos(math.pi * step / settings.steps))
            record = records[int(order[step])]
            t = terms(image_of(record, mirror=bool(rng_for(settings.seed, step).integers(2))))
            loss = sum(t[mode][k] / balance[k] for mode in ("noisy", "clean") for k in TERMS)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            seconds += time.perf_counter() - started
            value = loss.detach().item()
            running = value if running is None else 0.95 * running + 0.05 * value
            bar.update(1)
            bar.set_postfix(loss=f"{running:.3f}")
            entry = None
            if step % settings.eval_every == 0 or step == settings.steps:
                entry = {"step": step, "seconds": round(seconds, 1), "train_loss": running,
                         "held_out": held_out_loss(balance)}
            elif step % 10 == 0:
                entry = {"step": step, "seconds": round(seconds, 1), "train_loss": running}
            if entry:
                log(entry)
            if step % settings.checkpoint_every == 0 or step == settings.steps or stop.requested:
                save_state()
        if stop.requested and step < settings.steps:
            save_state()
            print(f"int8_robust_finetune: stopped at step {step}; run the same command to resume", file=sys.stderr)
    summary = {"checkpoint": str(checkpoint), "settings": asdict(settings), "steps": step, "seconds": round(seconds, 1),
               "train_images": len(records), "held_out_images": len(held_out), "held_out_before": before,
               "held_out_after": held_out_loss(balance) if step >= settings.steps else None,
               "convs_with_noise": len(noise.ranges)}
    noise.remove()
    if step >= settings.steps:
        save_checkpoint(out / FINAL_FILE, student, student.cfg, robust_finetune=summary)
        atomic_write_json(out / "robust_summary.json", summary)
    return summary


def rng_for(seed: int, step: int) -> np.random.Generator:
    """The random mirror of a step, the same when a stopped run resumes."""
    return np.random.default_rng([seed, step])


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="model to start from and to match (default: the shipped demo model)")
    p.add_argument("--data", default="runs/demo-data", help="demo data folder (maskface demo-data --out DIR)")
    p.add_argument("--out", default="runs/int8_robust", help="output folder (default %(default)s)")
    defaults = RobustSettings()
    p.add_argument("--steps", type=int, default=defaults.steps, help="one image per step (default %(default)s)")
    p.add_argument("--images", type=int, default=defaults.images, help="train images stepped on (default %(default)s)")
    p.add_argument("--lr", type=float, default=defaults.lr, help="Adam's learning rate (default %(default)s)")
    p.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    p.add_argument("--eval-every", type=int, default=defaults.eval_every)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    for name in ("steps", "images"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.lr <= 0:
        p.error("--lr must be positive")
    return args


def main(argv=None) -> int:
    import torch

    from export.int8_finetune import split_train_records
    from export.quantize_int8 import MissingDataError
    from maskface.demo.weights import demo_checkpoint

    args = parse_args(argv)
    checkpoint = Path(args.checkpoint) if args.checkpoint else demo_checkpoint()
    if not checkpoint.is_file():
        print(f"int8_robust_finetune: checkpoint {checkpoint} not found", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = RobustSettings(steps=args.steps, images=args.images, lr=args.lr, checkpoint_every=args.checkpoint_every,
                              eval_every=args.eval_every, seed=args.seed)
    try:
        train, held_out = split_train_records(args.data, settings.images, HELD_OUT_IMAGES)
    except MissingDataError as e:
        print(f"int8_robust_finetune: {e}", file=sys.stderr)
        return 2
    try:
        summary = robust_finetune(checkpoint, Path(args.out), train, held_out, settings, progress=not args.no_progress)
    except ValueError as e:
        print(f"int8_robust_finetune: {e}", file=sys.stderr)
        return 2
    if summary["held_out_after"] is None:
        return 0
    b, a = summary["held_out_before"], summary["held_out_after"]
    print(f"int8_robust_finetune: {summary['steps']} steps in {summary['seconds']:.0f} s; held-out loss noisy "
          + ", ".join(f"{k} {b['noisy_' + k]:.3f} -> {a['noisy_' + k]:.3f}" for k in TERMS)
          + "; clean " + ", ".join(f"{k} {a['clean_' + k]:.3f}" for k in TERMS)
          + f"; wrote {Path(args.out) / FINAL_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
