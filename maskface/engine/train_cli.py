"""`maskface train`: the §3.3 training recipe from the command line (see engine/trainer.py).

    maskface train --config r50 --data widerface:/data/widerface --output runs/r50
    torchrun --nproc_per_node 8 -m maskface.cli train --config r50 --data widerface:/data/widerface

Model fields can be changed with --set SECTION.FIELD=VALUE or --set SECTION=JSON-OBJECT (JSON values).
A narrower FPN needs context branches that add up to its width, e.g. for a smoke run:

    --set fpn.channels=64 --set 'context={"branch1": 32, "trunk": 32, "branch2": 16, "trunk2": 32, "branch3": 16}'
"""
from __future__ import annotations

import argparse
import json

from .train_options import TrainOptions

_DEFAULTS = TrainOptions(data="")


def _parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects SECTION.FIELD=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def add_parser(subparsers) -> argparse.ArgumentParser:
    d = _DEFAULTS
    p = subparsers.add_parser("train", help="train MaskFace (SGD, warm-up, plateau decay, AMP, DDP via torchrun)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=d.config, help="preset: r50, mbv2, rx101, rx152, demo, or tiny (narrow widths for smoke runs)")
    p.add_argument("--data", required=True, help="KIND:PATH with KIND widerface, aflw or 300w")
    p.add_argument("--val-data", default=None, help="KIND:PATH of the validation set (default: the --data root; 'none' disables)")
    p.add_argument("--train-split", default=d.train_split, help="annotation split to train on")
    p.add_argument("--val-split", default=None, help="default: val (WIDER FACE), holdout (AFLW, 300W: images held "
                   "out of --train-split; their test splits never steer training)")
    p.add_argument("--val-holdout-fraction", type=float, default=d.val_holdout_fraction,
                   help="share of the train images held out with --val-split holdout")
    p.add_argument("--output", "-o", default=d.output_dir, help="folder for checkpoints and log.jsonl")
    p.add_argument("--backbone-weights", default=None, metavar="PATH", help="local ImageNet state_dict (torchvision naming)")
    p.add_argument("--init-weights", default=None, metavar="CHECKPOINT",
                   help="start a new run from this checkpoint's weights wherever name and shape match (not a resume)")
    p.add_argument("--init-exclude", nargs="+", default=[], metavar="MODULE",
                   help="modules that keep their fresh initialisation, e.g. keypoint_head")
    p.add_argument("--train-only", nargs="+", default=[], metavar="MODULE",
                   help="train only these modules (e.g. keypoint_head); the rest stay frozen")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per process (paper: 8 or 16 in total)")
    p.add_argument("--max-iter", type=int, default=d.max_iter, help="iterations (batches per process) in all")
    p.add_argument("--lr", type=float, default=d.base_lr, help="peak learning rate after warm-up")
    p.add_argument("--warmup-iters", type=int, default=d.warmup_iters, help="linear warm-up length (iterations)")
    p.add_argument("--warmup-start-lr", type=float, default=d.warmup_start_lr, help="learning rate at iteration 0")
    p.add_argument("--min-lr", type=float, default=d.min_lr, help="floor of the plateau decay (training ends when it stops improving there)")
    p.add_argument("--patience", type=int, default=d.patience, help="evaluations without improvement before lr x0.1")
    p.add_argument("--lr-steps", type=int, nargs="+", default=list(d.lr_steps), metavar="ITER",
                   help="also multiply the lr by 0.1 at these iterations (default: none, the plateau rule only)")
    p.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="SGD weight decay")
    p.add_argument("--eval-period", type=int, default=d.eval_period, help="validate every N iterations (and at the end)")
    p.add_argument("--checkpoint-period", type=int, default=d.checkpoint_period, help="write OUTPUT/last.pth every N iterations (also on SIGTERM / SIGINT)")
    p.add_argument("--log-period", type=int, default=d.log_period, help="append a record to OUTPUT/log.jsonl every N iterations")
    p.add_argument("--crop-size", type=int, default=None, help="640 (WIDER FACE) / 480 (AFLW, 300W)")
    p.add_argument("--scale-range", type=float, nargs=2, default=d.scale_range, metavar=("LO", "HI"), help="WIDER FACE: random rescale factor range before the crop")
    p.add_argument("--area-range", type=float, nargs=2, default=d.area_range, metavar=("LO", "HI"), help="WIDER FACE: faces whose box area (crop pixels) is outside are dropped")
    p.add_argument("--face-size-range", type=float, nargs=2, default=d.face_size_range, metavar=("LO", "HI"), help="AFLW / 300W: the random face is resized to a side in this range (px)")
    p.add_argument("--max-rotation", type=float, default=d.max_rotation, help="AFLW / 300W: random rotation in +-degrees")
    p.add_argument("--no-color", action="store_true", help="switch off the colour distortion")
    p.add_argument("--val-max-side", type=int, default=d.val_max_side, help="validation images are resized so the longer side is at most this")
    p.add_argument("--val-max-images", type=int, default=None, help="validate on the first N images only (default: all)")
    p.add_argument("--val-metric", default=d.val_metric, choices=("auto", "ap50", "nme"),
                   help="what ranks checkpoints and drives the lr plateau rule (auto: AP50 for WIDER FACE, NME "
                        "for AFLW / 300W; nme on WIDER FACE uses the inter-ocular normaliser)")
    p.add_argument("--workers", type=int, default=d.num_workers, help="data-loader worker processes")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of weights, sampling and augmentation")
    p.add_argument("--amp", default=d.amp, choices=("auto", "fp16", "bf16", "off"), help="mixed precision on CUDA (auto: bf16 if supported, else fp16; CPU: off)")
    p.add_argument("--device", default=d.device, help="auto (CUDA when available, else CPU), cpu, cuda")
    p.add_argument("--no-resume", action="store_true", help="ignore OUTPUT/last.pth")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (log lines only)")
    p.add_argument("--channels-last", action="store_true",
                   help="NHWC activations (faster CPU convolutions; keep it the same for a whole run)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="override a model config field")
    p.set_defaults(func=run)
    return p


def options_from_args(args: argparse.Namespace) -> TrainOptions:
    return TrainOptions(
        data=args.data, output_dir=args.output, val_data=args.val_data, train_split=args.train_split,
        val_split=args.val_split, val_holdout_fraction=args.val_holdout_fraction,
        config=args.config, model_overrides=_parse_set(args.set),
        backbone_weights=args.backbone_weights, init_weights=args.init_weights,
        init_exclude=tuple(args.init_exclude), train_only=tuple(args.train_only), batch_size=args.batch_size, max_iter=args.max_iter,
        base_lr=args.lr, warmup_iters=args.warmup_iters, warmup_start_lr=args.warmup_start_lr, min_lr=args.min_lr,
        patience=args.patience, lr_steps=tuple(args.lr_steps), momentum=args.momentum, weight_decay=args.weight_decay,
        eval_period=args.eval_period, checkpoint_period=args.checkpoint_period, log_period=args.log_period,
        crop_size=args.crop_size, scale_range=tuple(args.scale_range), area_range=tuple(args.area_range),
        face_size_range=tuple(args.face_size_range), max_rotation=args.max_rotation, color=not args.no_color,
        val_max_side=args.val_max_side, val_max_images=args.val_max_images,
        val_metric=args.val_metric, num_workers=args.workers,
        seed=args.seed, amp=args.amp, device=args.device, resume=not args.no_resume,
        progress=not args.no_progress, channels_last=args.channels_last)


def run(args: argparse.Namespace) -> int:
    from .trainer import train

    import signal

    result = train(options_from_args(args))
    if "interrupted" in result:  # stopped by SIGTERM / SIGINT after writing last.pth
        print(json.dumps({"done": False, **result}))
        return 128 + int(signal.Signals[result["interrupted"]])
    print(json.dumps({"done": True, **result}))
    return 0
