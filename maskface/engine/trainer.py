"""The §3.3 training recipe: SGD, linear warm-up, step decay on a validation plateau, AMP, DDP.

Run it with `maskface train` (engine/train_cli.py) or `Trainer(TrainOptions(...)).train()`;
under `torchrun --nproc_per_node N` every process runs the same code (NCCL on GPUs, gloo on CPUs).

Recipe (defaults = the paper's): SGD momentum 0.9, weight decay 1e-4, batch 8 per process;
lr rises linearly from 1e-4 to 1e-2 over the first 5k iterations, then is multiplied by 0.1
each time the validation metric has not improved for `patience` evaluations, never below 1e-4
(and, with `lr_steps`, also at those fixed iterations: a run with a time budget).
Training stops at `max_iter`, or earlier once the lr sits at the floor and the metric stops
improving once more. `best.pth` is the checkpoint of the best validation metric.

Validation (what the lr decay and best.pth follow; never a test split by default):
- WIDER FACE: the val split, ranked by face AP at IoU 0.5 (all faces pooled, VOC AP);
- AFLW / 300W: a held-out part of the *train* split (`val_holdout_fraction` of its images, drawn
  from the seed; those images are removed from training), ranked by landmark NME under the §4.2
  matching (most confident detection at IoU 0.4; box normaliser for AFLW, inter-ocular for 300W;
  a face without a matching detection counts as NME = `UNMATCHED_NME`). Lower NME is better.

Exact resume: `last.pth` (written atomically by maskface.checkpoint) holds the model, optimizer,
scheduler, AMP scaler, iteration and every RNG state; the data order and the augmentations are
functions of (seed, epoch, index) only (TrainBatchSampler + FaceDataset), so a run stopped at any
checkpoint and resumed gives the same weights as an uninterrupted one (bit-exact on CPU).
SIGTERM / SIGINT (Ctrl-C, a scheduler's preemption, torchrun forwarding either to every rank)
finish the current iteration, write `last.pth` and stop; the same command resumes from it.

Logs: a tqdm bar with the losses and lr (rank 0), a second bar while validating, and `log.jsonl`
in the output folder, one JSON object per line:
{"type": "train"|"val"|"checkpoint"|"start"|"end"|"interrupted", "iter": ..., ...};
`maskface plot-log OUTPUT/log.jsonl --out curves.png` draws it.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import load_weights, read_checkpoint, remove_stale_temporaries, save_checkpoint
from ..config import TINY_MODEL_FIELDS, MaskFaceConfig, get_config
from ..data.dataset import FaceDataset, collate
from ..data.registry import build_dataset
from ..data.transforms import LandmarkTrainTransform, MaxSide, WiderFaceTrainTransform
from ..io_utils import atomic_write_bytes
from ..modeling.maskface import MaskFace
from .partial_training import init_from_checkpoint, train_only
from .train_options import TrainOptions

LAST = "last.pth"
BEST = "best.pth"
FINAL = "model_final.pth"
LOG = "log.jsonl"

# Narrow widths for smoke runs and tests (with the mbv2 preset on ~64-128 px synthetic images):
# 80 iterations of batch 2 on 4 images of 64x64 take ~15 s on one CPU thread and find all faces
# (tests/engine/test_train.py). On a busy 2-core machine use torch.set_num_threads(1) /
# OMP_NUM_THREADS=1: oversubscribed threads made the same run 10x slower.
SMOKE_MODEL_OVERRIDES: dict[str, Any] = TINY_MODEL_FIELDS  # the `tiny` preset's widths, for `mbv2` + overrides


# ----------------------------------------------------------------------------- schedule

class WarmupPlateauLR:
    """lr(it) = linear warm-up, then base * decay^k, floored; k = plateaus seen + fixed steps passed.

    `steps` (iterations, optional) decay the lr at fixed points as well, for a run that must end
    within a time budget (the demo model's recipe); the plateau rule still applies between them."""

    def __init__(self, base_lr: float, warmup_iters: int, warmup_start_lr: float, min_lr: float,
                 decay: float, patience: int, steps: tuple[int, ...] = ()):
        self.base_lr, self.warmup_iters, self.warmup_start_lr = base_lr, warmup_iters, warmup_start_lr
        self.min_lr, self.decay, self.patience = min_lr, decay, patience
        self.steps = tuple(sorted(int(s) for s in steps))
        self.num_decays = 0
        self.best: float | None = None
        self.bad_evals = 0
        self.finished = False  # at the floor and no longer improving

    def lr(self, iteration: int) -> float:
        if iteration < self.warmup_iters:
            t = iteration / max(1, self.warmup_iters)
            return self.warmup_start_lr + (self.base_lr - self.warmup_start_lr) * t
        return max(self.min_lr, self.base_lr * self.decay ** self._decays(iteration))

    def _decays(self, iteration: int) -> int:
        return self.num_decays + sum(iteration >= s for s in self.steps)

    def at_floor(self, iteration: int | None = None) -> bool:
        k = self.num_decays if iteration is None else self._decays(iteration)
        return self.base_lr * self.decay ** k <= self.min_lr * (1 + 1e-9)

    def report(self, metric: float, iteration: int) -> bool:
        """Record a validation metric (higher is better); True when it is a new best."""
        if self.best is None or metric > self.best:
            self.best, self.bad_evals = float(metric), 0
            return True
        self.bad_evals += 1
        if self.bad_evals >= self.patience and iteration >= self.warmup_iters:
            self.bad_evals = 0
            if self.at_floor(iteration):
                self.finished = True
            else:
                self.num_decays += 1
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"num_decays": self.num_decays, "best": self.best, "bad_evals": self.bad_evals,
                "finished": self.finished}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_decays = int(state["num_decays"])
        self.best = None if state["best"] is None else float(state["best"])
        self.bad_evals = int(state["bad_evals"])
        self.finished = bool(state["finished"])


# ----------------------------------------------------------------------------- data order

class TrainBatchSampler(torch.utils.data.Sampler):
    """Endless batches of (index, epoch) keys, a pure function of (seed, iteration, rank).

    Epoch e is a permutation of the dataset drawn from (seed, e), cut into global batches of
    batch_size * world_size (tiled when the dataset is smaller); rank r takes its slice. Starting
    at `start_iter` skips exactly the batches already trained on.
    """

    def __init__(self, dataset_len: int, batch_size: int, seed: int = 0, start_iter: int = 0,
                 world_size: int = 1, rank: int = 0):
        if dataset_len <= 0:
            raise ValueError("cannot train on an empty dataset")
        self.n, self.batch_size, self.seed = dataset_len, batch_size, seed
        self.start_iter, self.world_size, self.rank = start_iter, world_size, rank
        self.global_batch = batch_size * world_size
        self.iters_per_epoch = max(1, dataset_len // self.global_batch)

    def batch(self, iteration: int) -> list[tuple[int, int]]:
        epoch, b = divmod(iteration, self.iters_per_epoch)
        perm = np.random.default_rng([self.seed, 7919, epoch]).permutation(self.n)
        need = self.iters_per_epoch * self.global_batch
        if need > self.n:
            perm = np.tile(perm, -(-need // self.n))
        start = b * self.global_batch + self.rank * self.batch_size
        return [(int(i), epoch) for i in perm[start:start + self.batch_size]]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        it = self.start_iter
        while True:
            yield self.batch(it)
            it += 1


# ----------------------------------------------------------------------------- helpers

def apply_overrides(cfg: MaskFaceConfig, overrides: dict[str, Any]) -> MaskFaceConfig:
    """Set nested config fields from {"section": {"field": value}} or {"section.field": value}."""
    flat: dict[str, Any] = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = value

    walk("", overrides)
    for key, value in flat.items():
        obj = cfg
        *path, name = key.split(".")
        for part in path:
            if not hasattr(obj, part):
                raise ValueError(f"unknown config field {key!r}")
            obj = getattr(obj, part)
        if not dataclasses.is_dataclass(obj) or name not in {f.name for f in dataclasses.fields(obj)}:
            raise ValueError(f"unknown config field {key!r}")
        setattr(obj, name, tuple(value) if isinstance(value, list) else value)
    return cfg


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"bit_generator": np_state["bit_generator"], "key": np_state["state"]["key"].tolist(),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"], "state": {"key": np.asarray(n["key"], np.uint32),
                         "pos": n["pos"]}, "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(value):
    return [_to_lists(v) for v in value] if isinstance(value, tuple) else value


HOLDOUT = "holdout"
# NME given to a validation face that no detection matches: an error as large as the normaliser,
# worse than any matched prediction in practice, so that missing faces lower the ranking.
UNMATCHED_NME = 1.0


def default_val_split(kind: str) -> str:
    """WIDER FACE: its val split. AFLW / 300W: images held out of the train split (their test
    splits are what the paper reports, so they must not steer training)."""
    return "val" if kind == "widerface" else HOLDOUT


def holdout_indices(num_images: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of the images held out for validation: round(fraction * n), at least 1 and
    at most n - 1, drawn from (seed) only."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_holdout_fraction must be in (0, 1), got {fraction}")
    if num_images < 2:
        raise ValueError(f"cannot hold out validation images from a train split of {num_images} image(s)")
    count = min(num_images - 1, max(1, round(fraction * num_images)))
    return np.sort(np.random.default_rng([seed, 4099]).permutation(num_images)[:count])


def validation_metric(kind: str, choice: str = "auto") -> str:
    """The metric that ranks checkpoints: `choice`, or for "auto" AP50 on WIDER FACE and NME on
    the landmark data sets."""
    if choice not in ("auto", "ap50", "nme"):
        raise ValueError(f"val_metric must be auto, ap50 or nme, got {choice!r}")
    if choice != "auto":
        return choice
    return "ap50" if kind == "widerface" else "nme"


def validation_score(kind: str, metrics: dict[str, float], choice: str = "auto") -> tuple[str, float]:
    """(name, higher-is-better score) that ranks checkpoints: AP50, or -NME (validation_metric)."""
    name = validation_metric(kind, choice)
    if name == "ap50":
        return "ap50", float(metrics["ap50"])
    return "nme", -float(metrics["nme"])


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device: torch.device) -> DistInfo:
    """Join the torchrun process group (env RANK / WORLD_SIZE / LOCAL_RANK) when there is one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info


def leave_stop_signals_to_trainer(worker_id: int) -> None:
    """Data-loader workers ignore SIGTERM / SIGINT: a stop sent to the whole process group (systemd,
    `kill -- -PGID`, Ctrl-C) must reach only the trainer, which finishes its iteration and writes
    last.pth; a worker killed by it would end the run without that checkpoint. Workers still exit
    with the trainer (the loader shuts them down, and they watch their parent)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# ----------------------------------------------------------------------------- trainer

class Trainer:
    def __init__(self, options: TrainOptions):
        self.opts = options
        self.out = Path(options.output_dir)
        self.device = self._pick_device(options.device)
        self.dist = setup_distributed(self.device)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        kind = options.data.partition(":")[0].lower()
        self.kind = "300w" if kind == "w300" else kind
        self.train_set = self._train_dataset()
        self.val_set = self._val_dataset()
        cfg = get_config(options.config, num_landmarks=self.train_set.num_landmarks)
        apply_overrides(cfg, options.model_overrides)
        if options.backbone_weights:
            cfg.backbone.weights = str(options.backbone_weights)
        self.cfg = cfg
        torch.manual_seed(options.seed)
        self.model = MaskFace(cfg).to(self.device)
        self.memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        self.cfg.backbone.weights = None  # checkpoints carry the trained backbone
        resuming = options.resume and (self.out / LAST).is_file()
        if options.init_weights and not resuming:
            report = init_from_checkpoint(self.model, options.init_weights, tuple(options.init_exclude))
            self._log_main(f"initialised {len(report['loaded'])} tensors from {options.init_weights}; "
                           f"{len(report['kept_fresh'])} keep their fresh initialisation")
        if options.train_only:
            count = train_only(self.model, tuple(options.train_only))
            self._log_main(f"training only {', '.join(options.train_only)} ({count} parameter tensors)")
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=options.warmup_start_lr, momentum=options.momentum,
                                         weight_decay=options.weight_decay)
        self.schedule = WarmupPlateauLR(options.base_lr, options.warmup_iters, options.warmup_start_lr,
                                        options.min_lr, options.lr_decay, options.patience, options.lr_steps)
        self.amp_dtype = self._amp_dtype(options.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.iteration = 0
        if self.dist.is_main and self.out.is_dir():
            for tmp in remove_stale_temporaries(self.out, (LAST, BEST, FINAL)):
                self._log_main(f"removed {tmp.name}, left by a crash during a checkpoint save")
        if resuming:
            self.load(self.out / LAST)
            self._drop_log_records_after(self.iteration)
        self.ddp_model = self.model
        if self.dist.enabled:
            self.ddp_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    # ---- construction helpers
    @staticmethod
    def _pick_device(name: str) -> torch.device:
        if name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(name)

    def _amp_dtype(self, amp: str):
        if self.device.type != "cuda" or amp == "off":
            return None
        if amp == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if amp in ("fp16", "bf16"):
            return torch.float16 if amp == "fp16" else torch.bfloat16
        raise ValueError(f"amp must be auto, fp16, bf16 or off, got {amp!r}")

    def _train_dataset(self) -> FaceDataset:
        o = self.opts
        if self.kind == "widerface":
            transform = WiderFaceTrainTransform(crop_size=o.crop_size or 640, scale_range=tuple(o.scale_range),
                                                area_range=tuple(o.area_range), color=o.color)
        else:
            transform = LandmarkTrainTransform(crop_size=o.crop_size or 480, face_size_range=tuple(o.face_size_range),
                                               max_rotation=o.max_rotation, color=o.color)
        return build_dataset(o.data, split=o.train_split, transform=transform, seed=o.seed)

    def _val_dataset(self) -> FaceDataset | None:
        o = self.opts
        if o.val_data == "none":
            return None
        split = o.val_split or default_val_split(self.kind)
        transform = MaxSide(o.val_max_side) if o.val_max_side else None
        if split == HOLDOUT:
            return self._holdout_dataset(transform)
        try:
            ds = build_dataset(o.val_data or o.data, split=split, transform=transform)
        except FileNotFoundError as exc:
            if o.val_data:  # asked for explicitly: a missing set is an error
                raise
            self._log_main(f"no validation set ({exc}); the lr will only follow the warm-up and max_iter")
            return None
        if o.val_max_images:
            ds.records = ds.records[: o.val_max_images]
        return ds

    def _holdout_dataset(self, transform) -> FaceDataset:
        """Move `val_holdout_fraction` of the train images into a validation set."""
        o = self.opts
        if o.val_data:
            raise ValueError(f"val_split 'holdout' holds out part of --data and cannot read val_data "
                             f"{o.val_data!r}: pass --val-split SPLIT, the split of val_data to validate on")
        ds = build_dataset(o.data, split=o.train_split, transform=transform)
        held = holdout_indices(len(self.train_set.records), o.val_holdout_fraction, o.seed)
        if len(ds.records) != len(self.train_set.records):
            raise RuntimeError("the train split read twice gave different image lists")
        mask = np.zeros(len(ds.records), bool)
        mask[held] = True
        ds.records = [r for r, m in zip(ds.records, mask) if m]
        self.train_set.records = [r for r, m in zip(self.train_set.records, mask) if not m]
        if o.val_max_images:
            ds.records = ds.records[: o.val_max_images]
        self._log_main(f"validation: {len(ds.records)} images held out of {o.train_split} "
                       f"({len(self.train_set.records)} left for training)")
        return ds

    def _log_main(self, message: str) -> None:
        if self.dist.is_main:
            print(f"[maskface train] {message}", flush=True)

    # ---- checkpoints
    def state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "iteration": self.iteration,
            "rng": rng_state(),
            "train_options": json.loads(json.dumps(self.opts.to_dict())),
        }

    def save(self, name: str = LAST) -> Path:
        path = self.out / name
        save_checkpoint(path, self.model, self.cfg, **self.state())
        return path

    def load(self, path: str | Path) -> None:
        data = read_checkpoint(path)
        load_weights(self.model, data)
        self.optimizer.load_state_dict(data["optimizer"])
        self.schedule.load_state_dict(data["scheduler"])
        if data.get("scaler"):
            self.scaler.load_state_dict(data["scaler"])
        self.iteration = int(data["iteration"])
        set_rng_state(data["rng"])
        self._log_main(f"resumed from {path} at iteration {self.iteration}")

    # ---- logging
    def _drop_log_records_after(self, iteration: int) -> None:
        """Resuming replays the iterations after the checkpoint: drop their records from the
        crashed run (written atomically) so that log.jsonl holds each iteration once."""
        path = self.out / LOG
        if not self.dist.is_main or not path.is_file():
            return
        kept, dropped = [], 0
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by the crash
                dropped += 1
                continue
            if record.get("type") in ("train", "val", "checkpoint") and record.get("iter", 0) > iteration:
                dropped += 1
                continue
            kept.append(line)
        if dropped:
            atomic_write_bytes(path, "".join(f"{line}\n" for line in kept).encode())
            self._log_main(f"dropped {dropped} log record(s) after iteration {iteration} (they are replayed)")

    def log(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / LOG, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    # ---- validation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Face AP at IoU 0.5 (all faces pooled, VOC AP) on the validation set, by rank 0, and for
        the landmark data sets the mean NME (see the module doc)."""
        from ..evaluation.ap import pooled_detection_ap

        model = self.model
        with_nme = validation_metric(self.kind, self.opts.val_metric) == "nme" or self.kind != "widerface"
        was_training = model.training
        saved = model.cfg.inference.score_threshold
        model.cfg.inference.score_threshold = self.opts.val_score_threshold
        model.eval()
        gts, boxes, scores, errors = [], [], [], []
        try:
            loader = torch.utils.data.DataLoader(
                self.val_set, batch_size=max(1, self.opts.batch_size // 2), shuffle=False,
                num_workers=min(2, self.opts.num_workers),
                collate_fn=functools.partial(collate, size_divisibility=self.cfg.input.size_divisibility))
            # Say so: validation can take minutes, during which the training bar does not move.
            self._log_main(f"validating {len(self.val_set)} images at iteration {self.iteration}...")
            batches = loader
            if self.opts.progress:
                from tqdm import tqdm

                batches = tqdm(loader, desc="validate", unit="batch", leave=False, dynamic_ncols=True)
            for images, targets in batches:
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    results = model(images.to(self.device).contiguous(memory_format=self.memory_format))
                for r, t in zip(results, targets):
                    gts.append(t["boxes"].numpy())
                    boxes.append(r["boxes"].float().cpu().numpy())
                    scores.append(r["scores"].float().cpu().numpy())
                    if with_nme:
                        errors.append(validation_nme(t, r, "box" if self.kind == "aflw" else "interocular"))
        finally:
            model.cfg.inference.score_threshold = saved
            model.train(was_training)
        result = pooled_detection_ap(gts, boxes, scores, iou_threshold=0.5)
        metrics = {"ap50": float(result.ap), "num_faces": int(result.num_faces),
                   "num_detections": int(result.num_detections)}
        if with_nme:
            e = np.concatenate(errors) if errors else np.zeros(0)
            matched = e[e != UNMATCHED_NME]
            metrics.update(nme=float(e.mean()) if e.size else float("nan"),
                           num_unmatched=int((e == UNMATCHED_NME).sum()),
                           nme_matched=float(matched.mean()) if matched.size else float("nan"))
        return metrics

    def _validate(self) -> None:
        metrics = None
        if self.dist.is_main:
            metrics = self.evaluate()
            name, score = validation_score(self.kind, metrics, self.opts.val_metric)
            improved = self.schedule.report(score, self.iteration)
            metrics.update(metric=name, best=self.schedule.best, improved=improved)
            self.log({"type": "val", "iter": self.iteration, **metrics,
                      "lr_next": self.schedule.lr(self.iteration)})
            if improved:
                self.save(BEST)
        if self.dist.enabled:  # every rank must follow the same schedule
            box = [self.schedule.state_dict()]
            dist.broadcast_object_list(box, src=0)
            self.schedule.load_state_dict(box[0])

    # ---- stopping on SIGTERM / SIGINT
    def _install_stop_handlers(self) -> dict:
        """SIGTERM / SIGINT finish the current iteration, then the loop writes last.pth and stops
        (a second signal of the same kind acts at once). Only in the main thread, as Python needs."""
        self.stop_signal: int | None = None
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}

        def request_stop(signum, _frame):
            if self.stop_signal is not None:  # asked twice: do not wait any longer
                signal.signal(signum, previous.get(signum, signal.SIG_DFL))
                os.kill(os.getpid(), signum)
                return
            self.stop_signal = signum
            self._log_main(f"{signal.Signals(signum).name}: stopping after iteration {self.iteration + 1}, "
                           f"then writing {self.out / LAST}")

        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, request_stop)
        return previous

    # ---- the loop
    def train(self) -> dict[str, Any]:
        previous = self._install_stop_handlers()
        try:
            return self._train()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _train(self) -> dict[str, Any]:
        o = self.opts
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.log({"type": "start", "iter": self.iteration, "world_size": self.dist.world_size,
                  "device": str(self.device), "amp": str(self.amp_dtype), "num_train_images": len(self.train_set),
                  "num_val_images": len(self.val_set) if self.val_set is not None else 0,
                  "config": self.cfg.name, "options": json.loads(json.dumps(o.to_dict()))})
        sampler = TrainBatchSampler(len(self.train_set), o.batch_size, o.seed, self.iteration,
                                    self.dist.world_size, self.dist.rank)
        loader = torch.utils.data.DataLoader(self.train_set, batch_sampler=sampler, collate_fn=collate,
                                             num_workers=o.num_workers, pin_memory=self.device.type == "cuda",
                                             persistent_workers=False, worker_init_fn=leave_stop_signals_to_trainer)
        bar = None
        if o.progress and self.dist.is_main:
            from tqdm import tqdm
            bar = tqdm(total=o.max_iter, initial=self.iteration, desc="train", dynamic_ncols=True)
        self.model.train()
        last: dict[str, float] = {}
        t_last = time.perf_counter()
        data_iter = iter(loader)
        try:
            while self.iteration < o.max_iter and not self.schedule.finished:
                t0 = time.perf_counter()
                images, targets = next(data_iter)
                data_time = time.perf_counter() - t0
                images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
                targets = [{k: v.to(self.device, non_blocking=True) for k, v in t.items()} for t in targets]
                lr = self.schedule.lr(self.iteration)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    losses = self.ddp_model(images, targets)
                losses = {k: v.float() for k, v in losses.items()}
                total = sum(losses.values())
                if not torch.isfinite(total):
                    raise FloatingPointError(
                        f"non-finite loss at iteration {self.iteration}: "
                        f"{ {k: float(v) for k, v in losses.items()} } (lr {lr:g})")
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(total).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.iteration += 1
                last = {"loss": float(total.detach()), **{k: float(v.detach()) for k, v in losses.items()}}
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({**{k.replace("loss_", ""): f"{v:.3f}" for k, v in last.items()}, "lr": f"{lr:.2e}"})
                if self.iteration % o.log_period == 0 or self.iteration == 1:
                    now = time.perf_counter()
                    self.log({"type": "train", "iter": self.iteration, "lr": lr, **last,
                              "data_time": round(data_time, 4),
                              "sec_per_iter": round((now - t_last) / (o.log_period if self.iteration > 1 else 1), 4)})
                    t_last = now
                if self.val_set is not None and self.iteration % o.eval_period == 0:
                    self._validate()
                if self.iteration % o.checkpoint_period == 0 and self.dist.is_main:
                    path = self.save(LAST)
                    self.log({"type": "checkpoint", "iter": self.iteration, "path": str(path)})
                if self.stop_signal is not None:
                    break
        finally:
            if bar is not None:
                bar.close()
        if self.stop_signal is not None:
            name = signal.Signals(self.stop_signal).name
            if self.dist.is_main:
                path = self.save(LAST)
                self.log({"type": "interrupted", "iter": self.iteration, "signal": name, "path": str(path)})
                self._log_main(f"{name}: wrote {path} at iteration {self.iteration}; run the same command to resume")
            return {"iteration": self.iteration, "best": self.schedule.best, "interrupted": name, **last}
        extra = {}
        if self.dist.enabled:
            extra["ddp_max_param_diff"] = self.max_param_diff_across_ranks()
        if self.dist.is_main:
            self.save(LAST)
            self.save(FINAL)
            self.log({"type": "end", "iter": self.iteration, "best": self.schedule.best, **last, **extra})
        if self.dist.enabled:
            dist.barrier()
        return {"iteration": self.iteration, "best": self.schedule.best, **last, **extra}

    @torch.no_grad()
    def max_param_diff_across_ranks(self) -> float:
        """Largest |w - w_rank0| over all weights and ranks (0.0 when DDP kept them in sync)."""
        worst = torch.zeros((), dtype=torch.float64, device=self.device)
        for p in self.model.state_dict().values():
            if not torch.is_floating_point(p):
                continue
            ref = p.detach().clone()
            dist.broadcast(ref, src=0)
            worst = torch.maximum(worst, (p.detach() - ref).abs().max().double() if p.numel() else worst)
        dist.all_reduce(worst, op=dist.ReduceOp.MAX)
        return float(worst)

    def close(self) -> None:
        if self.dist.enabled and dist.is_initialized():
            dist.destroy_process_group()


def validation_nme(target: dict[str, torch.Tensor], result: dict[str, torch.Tensor], normaliser: str) -> np.ndarray:
    """NME of every scorable face of one validation image: the most confident detection with IoU
    >= 0.4 (§4.2), UNMATCHED_NME when there is none."""
    from ..evaluation.landmarks import box_normaliser, interocular_normaliser, match_faces, nme_per_face

    gt_boxes = target["boxes"].numpy()
    gt_points = target["landmarks"].numpy()
    valid = target["landmark_valid"].numpy()
    d = box_normaliser(gt_boxes) if normaliser == "box" else interocular_normaliser(gt_points, valid)
    scorable = np.isfinite(d) & (d > 0) & valid.any(axis=1)
    out = np.full(len(gt_boxes), UNMATCHED_NME)
    match = match_faces(gt_boxes, result["boxes"].float().cpu().numpy(), result["scores"].float().cpu().numpy(), 0.4)
    hit = match >= 0
    if hit.any():
        pred = result["landmarks"].float().cpu().numpy()[match[hit]]
        out[hit] = nme_per_face(pred, gt_points[hit], d[hit], valid[hit])
    return out[scorable]


def train(options: TrainOptions) -> dict[str, Any]:
    trainer = Trainer(options)
    try:
        return trainer.train()
    finally:
        trainer.close()


__all__ = ["SMOKE_MODEL_OVERRIDES", "TrainOptions", "Trainer", "TrainBatchSampler", "WarmupPlateauLR",
           "apply_overrides", "holdout_indices", "train", "validation_metric", "validation_nme", "validation_score"]
