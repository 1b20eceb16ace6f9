"""CLI: ``maskface predict-widerface``, the inference side of the WIDER FACE benchmark: a checkpoint's
detections for every image of a WIDER FACE folder, written in the submission layout
(maskface.evaluation.widerface_submission) that ``maskface evaluate widerface`` scores.

    maskface predict-widerface --checkpoint CKPT --images WIDER_val/images --out DIR [--tta] [--resume]

Input errors (missing folder, checkpoint or listed image; bad --tta-scales) exit 2 with one line on
stderr; each prediction file is written atomically, so --resume can pick up after a crash.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


def _list_widerface_images(images_dir: Path, gt_dir: str | None) -> list[tuple[str, Path]]:
    """(event, image path) pairs: from the ground-truth list when --gt is given (every val image
    must exist), else every <event>/<image>.jpg/.png under the folder."""
    if gt_dir is not None:
        from maskface.evaluation.widerface_gt import load_widerface_gt

        gt = load_widerface_gt(gt_dir)
        pairs = []
        for event, name in zip(gt.image_events, gt.image_names):
            path = images_dir / event / f"{name}.jpg"
            if not path.is_file():
                raise FileNotFoundError(f"image {path} listed in the ground truth not found")
            pairs.append((event, path))
        return pairs
    pairs = sorted(
        (p.parent.name, p) for p in images_dir.glob("*/*")
        if p.suffix.lower() in (".jpg", ".jpeg", ".png") and p.is_file()
    )
    if not pairs:
        raise FileNotFoundError(f"no <event>/<image>.jpg files under {images_dir} (pass WIDER_val/images)")
    return pairs


def run_predict_widerface(args: argparse.Namespace) -> int:
    from maskface.evaluation.widerface_submission import prediction_path, write_predictions

    images_dir = Path(args.images)
    try:
        if not images_dir.is_dir():
            raise FileNotFoundError(f"image folder not found: {images_dir}")
        if not Path(args.checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint not found: {args.checkpoint}")
        pairs = _list_widerface_images(images_dir, args.gt)
        scales = tuple(float(s) for s in args.tta_scales.split(",")) if args.tta else (1.0,)
        if any(not math.isfinite(s) or s <= 0 for s in scales):
            raise ValueError(f"--tta-scales must be positive numbers, got {args.tta_scales!r}")
    except (FileNotFoundError, ValueError) as exc:
        print(f"maskface predict-widerface: error: {exc}", file=sys.stderr)
        return 2
    if args.limit:
        pairs = pairs[: args.limit]

    from tqdm import tqdm

    from maskface.checkpoint import load_model
    from maskface.engine.predictor import Predictor
    from maskface.engine.tta import TTAConfig, model_passes, tta_predict
    from maskface.api import resolve_device
    from maskface.io_utils import read_image

    args.device = resolve_device(args.device)
    model = load_model(args.checkpoint, map_location=args.device)
    model.cfg.inference.score_threshold = args.score_threshold
    if args.max_detections:
        model.cfg.inference.max_detections = args.max_detections
    predictor = Predictor(model, device=args.device, max_side=args.max_side or None)
    cfg = TTAConfig(scales=scales, flip=True, soft_nms_method=args.soft_nms,
                    max_detections=args.max_detections or TTAConfig.max_detections)
    # §4.2: Soft-NMS on each pass's raw detections (no hard NMS first, unless asked); boxes only.
    passes = model_passes(predictor, hard_nms_first=args.tta_hard_nms_first, with_landmarks=False)
    out = Path(args.out)
    done = 0
    for event, path in tqdm(pairs, desc="predict-widerface", unit="img", disable=args.quiet):
        if args.resume and prediction_path(out, event, path.stem).is_file():
            continue
        image = read_image(path)
        if args.tta:
            result = tta_predict(passes, image, cfg)
        else:
            result = predictor(image, with_landmarks=False)
        write_predictions(out, event, path.stem, result["boxes"], result["scores"], box_format="xyxy")
        done += 1
    print(f"wrote {done} prediction files under {out}")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("predict-widerface", help="write WIDER FACE submission files for a folder of images")
    p.add_argument("--checkpoint", required=True, help="a MaskFace checkpoint")
    p.add_argument("--images", required=True, help="WIDER_val/images (event folders with .jpg files)")
    p.add_argument("--out", required=True, help="output folder (<out>/<event>/<image>.txt)")
    p.add_argument("--gt", default=None, help="take the image list from this ground-truth folder")
    p.add_argument("--tta", action="store_true", help="flip + image pyramid + Soft-NMS + box voting (paper §4.2)")
    p.add_argument("--tta-scales", default="0.5,1,1.5", help="pyramid scales for --tta (comma separated)")
    p.add_argument("--soft-nms", choices=("linear", "gaussian"), default="linear",
                   help="Soft-NMS score decay of --tta (linear: 1 - IoU above 0.3; gaussian: exp(-IoU^2/0.5))")
    p.add_argument("--tta-hard-nms-first", action="store_true",
                   help="with --tta: run the model's hard NMS (0.4) before Soft-NMS (not the paper, which "
                   "applies Soft-NMS to each pass's raw detections)")
    p.add_argument("--score-threshold", type=float, default=0.02,
                   help="detection score threshold (low, as AP needs the whole curve)")
    p.add_argument("--max-detections", type=int, default=0,
                   help="detections kept per image (per pass and after voting; 0: the checkpoint's setting / 1000)")
    p.add_argument("--max-side", type=int, default=0, help="without --tta: resize so the longer side is at most "
                   "this (0: original size, the usual WIDER FACE evaluation)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--limit", type=int, default=0, help="only the first N images (smoke runs)")
    p.add_argument("--resume", action="store_true", help="skip images whose prediction file exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_predict_widerface)
