"""`maskface detect`: run the detector on images, write annotated images and JSON."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# numpy, torch and OpenCV are imported inside the functions: `maskface --help` must not load them.

DEMO_NAME = "astronaut"


def demo_image():
    """scikit-image's astronaut photo (shipped with the package: nothing is downloaded)."""
    import numpy as np

    try:
        from skimage import data
    except ImportError as exc:
        raise SystemExit("--demo needs scikit-image (pip install scikit-image)") from exc
    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])


def result_to_json(name: str, image, result: dict) -> dict:
    """The JSON layout of docs/CONTRACTS.md (written once, in maskface.api.Detections.to_dict)."""
    from ..api import Detections

    return Detections(result["boxes"], result["scores"], result["landmarks"], result["landmark_scores"],
                      image=image, name=name).to_dict()


def output_name_clash(sources: list[str]) -> str | None:
    """Outputs are named after the file stem: two inputs with one stem would overwrite each other's
    <stem>.jpg / <stem>.json. Says which, or None."""
    seen: dict[str, str] = {}
    for source in sources:
        stem = Path(source).stem if source != DEMO_NAME else DEMO_NAME
        if stem in seen:
            return (f"{seen[stem]} and {source} would both be written as {stem}.jpg (outputs are named after the "
                    "file name without its extension): rename one, or run them with different --out folders")
        seen[stem] = source
    return None


def load_predictor(args: argparse.Namespace):
    import torch

    from ..api import resolve_device
    from ..checkpoint import load_model
    from ..modeling.maskface import build_model
    from .predictor import Predictor

    from ..demo.weights import default_checkpoint

    checkpoint = default_checkpoint(args.checkpoint, args.config, args.random_init)
    if checkpoint:
        model = load_model(checkpoint)
    else:
        config = args.config or "r50"
        print(f"maskface: using a seeded random initialisation of '{config}' "
              "(untrained: it finds no faces at the default threshold)", file=sys.stderr)
        torch.manual_seed(0)
        model = build_model(config).eval()
    if args.score_threshold is not None:
        model.cfg.inference.score_threshold = args.score_threshold
    if args.max_detections is not None:
        model.cfg.inference.max_detections = args.max_detections
    if args.precision == "bf16":
        from ..runtimes.bf16_runtime import Bf16Predictor

        if resolve_device(args.device) != "cpu":
            raise ValueError("--precision bf16 is the CPU BF16 path: use it with --device cpu")
        return Bf16Predictor(model, max_side=args.max_side or None)
    return Predictor(model, device=resolve_device(args.device), max_side=args.max_side or None)


def run(args: argparse.Namespace) -> int:
    from ..io_utils import atomic_write_image, atomic_write_json, read_image
    from ..visualize import draw_detections

    inputs: list[tuple[str, object]] = []
    if args.demo:
        inputs.append((DEMO_NAME, demo_image()))
    for path in args.images:
        inputs.append((Path(path).stem, read_image(path)))
    if not inputs:
        print("maskface detect: give image paths or --demo", file=sys.stderr)
        return 2
    clash = output_name_clash([DEMO_NAME] * bool(args.demo) + list(args.images))
    if clash:
        print(f"maskface detect: {clash}", file=sys.stderr)
        return 2
    predictor = load_predictor(args)
    out = Path(args.out)
    for name, image in inputs:
        result = predictor(image)
        atomic_write_image(out / f"{name}.jpg", draw_detections(image, result))
        if args.json:
            atomic_write_json(out / f"{name}.json", result_to_json(name, image, result))
        print(f"{name}: {len(result['scores'])} faces -> {out / (name + '.jpg')}")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("detect", help="detect faces and landmarks in images")
    p.add_argument("images", nargs="*", help="image files (JPEG/PNG)")
    p.add_argument("--demo", action="store_true", help="also run on scikit-image's astronaut photo")
    p.add_argument("--checkpoint", help="a MaskFace checkpoint (default: the shipped demo model, "
                   "maskface/demo/MODEL_CARD.md)")
    p.add_argument("--config", default=None, help="a seeded, untrained preset instead of a checkpoint "
                   "(r50, mbv2, rx101, rx152, demo, tiny)")
    p.add_argument("--random-init", action="store_true", help="seeded untrained weights of --config (default r50)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--json", action="store_true", help="also write <name>.json with the numbers")
    p.add_argument("--score-threshold", type=float, default=None, help="override the checkpoint's threshold")
    p.add_argument("--max-detections", type=int, default=None, help="override the checkpoint's cap")
    p.add_argument("--max-side", type=int, default=640, help="resize so the longer side is at most this (0: keep)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: convolutions in BF16 on a CPU with native BF16 (AVX512-BF16 / AMX; with --device "
                   "cpu), decoding in FP32; refused with a clear error on other CPUs")
    p.set_defaults(func=run)
