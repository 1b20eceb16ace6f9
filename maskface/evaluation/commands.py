"""CLI: ``maskface evaluate widerface|landmarks|afw|pascal``, ``maskface predict-landmarks`` and
``maskface predict-faces`` (``maskface predict-widerface`` is maskface.engine.predict_widerface).

    maskface evaluate widerface --pred DIR [--gt DIR] [--plot pr.png] [--json ap.json]
        [--protocol matlab|continuous] [--allow-missing] [--events EVENT ...]
    maskface evaluate landmarks --pred FILE --gt FILE (--protocol aflw5|aflw19|300w | --normaliser box|interocular)
        [--iou 0.4] [--threshold 0.08] [--plot ced.png] [--json nme.json]
    maskface predict-landmarks --checkpoint CKPT --data aflw:ROOT --split test --protocol aflw19
        --out pred.json --gt-out gt.json [--plot ced.png] [--json nme.json]
    maskface predict-faces --checkpoint CKPT --images AFW/ --gt new_annotations_AFW.mat --out afw.txt [--tta]
    maskface evaluate afw|pascal --pred afw.txt --gt new_annotations_AFW.mat [--json ap.json]

File formats: WIDER FACE submission layout (maskface.evaluation.widerface) and the landmark
JSON/NPZ format (maskface.evaluation.landmarks). Outputs are written atomically. Exit codes:
0 success, 2 bad input (missing folder/file, malformed file) with a one-line error on stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _write_json(path: str, obj) -> None:
    from maskface.io_utils import atomic_write_bytes

    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


def _fail(prefix: str, exc: BaseException) -> int:
    print(f"maskface {prefix}: error: {exc}", file=sys.stderr)
    return 2


def run_widerface(args: argparse.Namespace) -> int:
    from maskface.evaluation import widerface as wf

    try:
        t0 = time.perf_counter()
        gt = wf.load_widerface_gt(args.gt)
        if args.events:
            gt = gt.subset(args.events)  # only these events' files are read and scored
        preds = wf.read_predictions(args.pred, gt, allow_missing=args.allow_missing, progress=not args.quiet)
        result = wf.evaluate_widerface(preds, gt, protocol=args.protocol)
        result.seconds = time.perf_counter() - t0
    except (FileNotFoundError, NotADirectoryError, ValueError, KeyError) as exc:
        return _fail("evaluate widerface", exc)
    print(f"WIDER FACE val ({result.protocol} protocol, {result.num_images} images, "
          f"{result.num_predictions} predictions, {result.seconds:.1f} s)")
    print(result.summary())
    if wf.TEXT_SETTING in result.curves:
        print(f"(ground truth from {gt.source.name}: every valid face counts; the easy / medium / hard APs need "
              f"the .mat files of the official evaluation code, eval_tools/ground_truth/)")
    if args.json:
        _write_json(args.json, result.to_dict(with_curves=True))
        print(f"json -> {args.json}")
    if args.plot:
        from maskface.evaluation.plots import plot_pr_curves

        plot_pr_curves(result, args.plot, title=f"WIDER FACE val ({result.protocol})")
        print(f"plot -> {args.plot}")
    return 0


def _landmark_settings(args: argparse.Namespace) -> tuple[str, float]:
    """(normaliser, IoU) from --protocol, overridden by explicit --normaliser / --iou."""
    from maskface.evaluation.landmark_protocol import get_protocol

    protocol = get_protocol(args.protocol) if args.protocol else None
    normaliser = args.normaliser or (protocol.normaliser if protocol else None)
    if normaliser is None:
        raise ValueError("give --protocol (aflw5, aflw19, 300w) or --normaliser (box, interocular)")
    iou = args.iou if args.iou is not None else (protocol.iou_threshold if protocol else 0.4)
    return normaliser, iou


def _report_landmarks(args: argparse.Namespace, result, normaliser: str, iou: float) -> None:
    print(result.summary())
    if args.json:
        _write_json(args.json, result.to_dict(with_errors=args.per_face))
        print(f"json -> {args.json}")
    if args.plot:
        from maskface.evaluation.plots import plot_ced_curves

        label = f"{normaliser} NME, IoU {iou:g}"
        plot_ced_curves({label: result.errors}, args.plot, max_error=result.ced_max_error,
                        threshold=args.threshold, xlabel=f"NME ({normaliser})")
        print(f"plot -> {args.plot}")


def run_landmarks(args: argparse.Namespace) -> int:
    from maskface.evaluation import landmarks as lm

    try:
        normaliser, iou = _landmark_settings(args)
        gt = lm.load_landmark_file(args.gt)
        pred = lm.join_by_stem(gt, lm.load_landmark_file(args.pred))
        result = lm.evaluate_landmarks(gt, pred, normaliser=normaliser, iou_threshold=iou,
                                       threshold=args.threshold, ced_max_error=args.max_error)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        return _fail("evaluate landmarks", exc)
    _report_landmarks(args, result, normaliser, iou)
    return 0


def run_predict_landmarks(args: argparse.Namespace) -> int:
    """§4.2: predictions of a checkpoint on an AFLW / 300W split, the matching ground truth, and
    their NME / CED / AUC / failure rate / CED@0.95 under the protocol's IoU and normaliser."""
    from maskface.evaluation import landmark_protocol as lp
    from maskface.evaluation import landmarks as lm

    try:
        protocol = lp.get_protocol(args.protocol)
        normaliser, iou = _landmark_settings(args)
        kind, sep, root = args.data.partition(":")
        if not sep or kind.lower().replace("w300", "300w") != protocol.dataset:
            raise ValueError(f"--data must be {protocol.dataset}:ROOT for protocol {protocol.name}, got {args.data!r}")
        if not Path(args.checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint not found: {args.checkpoint}")
        from maskface.data.registry import build_dataset

        dataset = build_dataset(args.data, split=args.split)
        records = dataset.records[: args.limit] if args.limit else dataset.records
        gt = lp.ground_truth_file(records, Path(root), protocol)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        return _fail("predict-landmarks", exc)

    from tqdm import tqdm

    from maskface.checkpoint import load_model
    from maskface.data.dataset import read_image

    from maskface.api import resolve_device

    args.device = resolve_device(args.device)
    model = load_model(args.checkpoint, map_location=args.device)
    if model.num_landmarks != protocol.num_landmarks:
        return _fail("predict-landmarks", ValueError(
            f"the checkpoint predicts {model.num_landmarks} landmarks, protocol {protocol.name} needs "
            f"{protocol.num_landmarks}"))
    model.cfg.inference.score_threshold = args.score_threshold
    predictor = lp.protocol_predictor(model, args.device)
    bar = None if args.quiet else (lambda it: tqdm(it, desc="predict-landmarks", unit="img"))
    pred = lp.prediction_file(predictor, records, Path(root), protocol.num_landmarks, read_image, bar)
    lm.save_landmark_file(args.out, pred)
    lm.save_landmark_file(args.gt_out, gt)
    print(f"predictions ({pred.num_faces} detections, {len(pred.images)} images) -> {args.out}; "
          f"ground truth ({gt.num_faces} faces) -> {args.gt_out}")
    result = lm.evaluate_landmarks(gt, pred, normaliser=normaliser, iou_threshold=iou, threshold=args.threshold,
                                   ced_max_error=args.max_error)
    print(f"protocol {protocol.name} (shorter side {lp.MIN_SIDE} px, no TTA, IoU {iou:g}, {normaliser} NME):")
    _report_landmarks(args, result, normaliser, iou)
    return 0


def run_face_eval(args: argparse.Namespace) -> int:
    """AFW / PASCAL faces (Table 2): pooled VOC AP at IoU 0.5."""
    from maskface.data.face_eval import read_detection_list, read_face_eval_mat
    from maskface.evaluation.face_eval import evaluate_face_eval

    name = {"afw": "AFW", "pascal": "PASCAL faces"}[args.evaluate_command]
    try:
        min_size = (args.min_size, args.min_size)
        gt = read_face_eval_mat(args.gt, min_size)
        result = evaluate_face_eval(gt, read_detection_list(args.pred), args.iou, args.protocol, args.iterations,
                                    min_size)
    except (FileNotFoundError, ValueError) as exc:
        return _fail(f"evaluate {args.evaluate_command}", exc)
    ignored = sum(int(im.ignore.sum()) for im in gt)
    print(f"{name}: AP {result.ap:.4f} ({args.protocol} protocol, overlap {args.iou:g}; {len(gt)} images, "
          f"{result.num_faces} faces, {ignored} ignored, {result.num_detections} detections counted)")
    if args.json:
        _write_json(args.json, {"dataset": name, "protocol": args.protocol, "iou_threshold": args.iou,
                                "ignored_faces": ignored, **result.to_dict()})
        print(f"json -> {args.json}")
    return 0


def run_predict_faces(args: argparse.Namespace) -> int:
    """Detections of a checkpoint on the images of an AFW / PASCAL faces annotation file."""
    from maskface.data.face_eval import format_detections, read_face_eval_mat

    images_dir = Path(args.images)
    try:
        if not Path(args.checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint not found: {args.checkpoint}")
        gt = read_face_eval_mat(args.gt)
        paths = [images_dir / im.name for im in gt]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} annotated images not found, e.g. {missing[0]}")
    except (FileNotFoundError, ValueError) as exc:
        return _fail("predict-faces", exc)

    from tqdm import tqdm

    from maskface.checkpoint import load_model
    from maskface.engine.predictor import Predictor
    from maskface.engine.tta import TTAConfig, model_passes, tta_predict
    from maskface.api import resolve_device
    from maskface.io_utils import atomic_write_bytes, read_image

    args.device = resolve_device(args.device)
    model = load_model(args.checkpoint, map_location=args.device)
    model.cfg.inference.score_threshold = args.score_threshold
    predictor = Predictor(model, device=args.device, max_side=args.max_side or None)
    passes = model_passes(predictor, with_landmarks=False)
    cfg = TTAConfig(scales=tuple(float(v) for v in args.tta_scales.split(",")), flip=True)
    lines = []
    for im, path in tqdm(list(zip(gt, paths)), desc="predict-faces", unit="img", disable=args.quiet):
        image = read_image(path)
        out = tta_predict(passes, image, cfg) if args.tta else predictor(image, with_landmarks=False)
        lines.append(format_detections(im.name, out["boxes"], out["scores"]))
    atomic_write_bytes(Path(args.out), "".join(lines).encode())
    print(f"wrote detections of {len(gt)} images -> {args.out}")
    return 0


def add_parser(subparsers) -> None:
    ev = subparsers.add_parser("evaluate", help="evaluate predictions (WIDER FACE AP, landmark NME)")
    sub = ev.add_subparsers(dest="evaluate_command", metavar="DATASET")
    ev.set_defaults(func=lambda args: ev.print_help() or 0)  # a bare `maskface evaluate` lists the data sets

    w = sub.add_parser("widerface", help="official WIDER FACE validation protocol (easy/medium/hard AP from the "
                       ".mat files; all-faces AP from wider_face_val_bbx_gt.txt)")
    w.add_argument("--pred", required=True, help="submission folder: <pred>/<event>/<image>.txt")
    w.add_argument("--gt", default=None, help="eval_tools/ground_truth/ of the official evaluation code "
                   "(wider_face_val.mat + wider_{easy,medium,hard}_val.mat: easy/medium/hard AP), or "
                   "wider_face_split/wider_face_val_bbx_gt.txt (all-faces AP only: the settings' keep lists exist "
                   "only in the .mat files); default: $MASKFACE_WIDER_GT")
    w.add_argument("--protocol", choices=("matlab", "continuous"), default="matlab",
                   help="matlab: the official script's arithmetic (default); continuous: real-valued IoU "
                   "as in the common Python port")
    w.add_argument("--allow-missing", action="store_true",
                   help="treat missing prediction files as images without detections (official behaviour)")
    w.add_argument("--events", nargs="*", default=None, help="evaluate only these events")
    w.add_argument("--plot", default=None, help="write the precision-recall curves to this .png")
    w.add_argument("--json", default=None, help="write AP and curves to this .json")
    w.add_argument("--quiet", action="store_true", help="no progress bars")
    w.set_defaults(func=run_widerface)

    for key, title in (("afw", "AFW"), ("pascal", "PASCAL faces")):
        fe = sub.add_parser(key, help=f"{title}: pooled VOC AP at IoU 0.5 (Table 2; face-eval toolbox annotations)")
        fe.add_argument("--pred", required=True, help="detections: lines 'image_id score x1 y1 x2 y2' "
                        "(`maskface predict-faces` writes them)")
        fe.add_argument("--gt", required=True, help="face-eval toolbox .mat (Annotations(i).imgname/.objects), e.g. "
                        + ("new_annotations_AFW.mat" if key == "afw" else "Annotations_Face_PASCALLayout_large_fixed.mat"))
        fe.add_argument("--protocol", choices=("toolbox", "voc"), default="toolbox",
                        help="toolbox: the face-eval toolbox (detection size filter, inclusive-pixel overlap > 0.5, "
                        "box calibration; maskface/evaluation/face_eval.py); voc: plain pooled VOC AP, IoU >= 0.5")
        fe.add_argument("--iou", type=float, default=0.5, help="overlap a detection needs to count as a face")
        fe.add_argument("--iterations", type=int, default=5, help="toolbox box-calibration rounds (its --nit; 1: none)")
        fe.add_argument("--min-size", type=float, default=30.0, help="faces narrower or lower than this are ignored")
        fe.add_argument("--json", default=None, help="write AP to this .json")
        fe.set_defaults(func=run_face_eval)

    lmk = sub.add_parser("landmarks", help="landmark NME / CED / AUC / failure rate after IoU matching")
    lmk.add_argument("--pred", required=True, help="predictions: .json or .npz with scores (`maskface "
                     "predict-landmarks` writes them), or `maskface detect --json` output (one file or its folder)")
    lmk.add_argument("--gt", required=True, help="ground truth (.json or .npz; `python -m maskface.data.synthetic` "
                     "writes one beside its images)")
    _add_landmark_metric_args(lmk)
    lmk.set_defaults(func=run_landmarks)

    pl = subparsers.add_parser("predict-landmarks", help="§4.2 landmark protocol: predict on AFLW / 300W, write "
                               "the prediction + ground-truth files, print NME / CED / AUC / failure rate")
    pl.add_argument("--checkpoint", required=True, help="a MaskFace checkpoint (5 points for aflw5, 19 for aflw19, "
                    "68 for 300w)")
    pl.add_argument("--data", required=True, help="aflw:ROOT or 300w:ROOT (the layouts of maskface/data)")
    pl.add_argument("--split", default="test", help="annotation split to predict on (AFLW: test, test_frontal; "
                    "300W: valid, valid_common, valid_challenge, test)")
    pl.add_argument("--out", required=True, help="prediction file to write (.json or .npz)")
    pl.add_argument("--gt-out", required=True, help="ground-truth file to write (.json or .npz), in the same layout")
    pl.add_argument("--score-threshold", type=float, default=0.02,
                    help="detections kept (the evaluator takes the most confident one per face)")
    pl.add_argument("--device", default="auto", help=_DEVICE_HELP)
    pl.add_argument("--limit", type=int, default=0, help="only the first N images (smoke runs)")
    pl.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_landmark_metric_args(pl, protocol_required=True)
    pl.set_defaults(func=run_predict_landmarks)

    pf = subparsers.add_parser("predict-faces", help="detections for AFW / PASCAL faces (the images of a "
                               "face-eval toolbox annotation file)")
    pf.add_argument("--checkpoint", required=True, help="a MaskFace checkpoint (.pth)")
    pf.add_argument("--images", required=True, help="folder holding the annotated images (imgname relative to it)")
    pf.add_argument("--gt", required=True, help="the face-eval toolbox .mat listing the images")
    pf.add_argument("--out", required=True, help="detection list to write")
    pf.add_argument("--tta", action="store_true", help="flip + pyramid + Soft-NMS on raw detections + box voting")
    pf.add_argument("--tta-scales", default="0.5,1,1.5", help="pyramid scales for --tta (comma separated)")
    pf.add_argument("--score-threshold", type=float, default=0.02,
                    help="detection score threshold (low, as AP needs the whole curve)")
    pf.add_argument("--max-side", type=int, default=0, help="resize so the longer side is at most this (0: original)")
    pf.add_argument("--device", default="auto", help=_DEVICE_HELP)
    pf.add_argument("--quiet", action="store_true", help="no progress bar")
    pf.set_defaults(func=run_predict_faces)


_DEVICE_HELP = "auto (CUDA when available, else CPU), cpu, cuda, cuda:N"


def _add_landmark_metric_args(parser, protocol_required: bool = False) -> None:
    parser.add_argument("--protocol", choices=("aflw5", "aflw19", "300w"), required=protocol_required,
                        default=None, help="§4.2 settings: aflw5 (IoU 0.3, box), aflw19 (IoU 0.4, box), "
                        "300w (IoU 0.4, inter-ocular)")
    parser.add_argument("--normaliser", choices=("box", "interocular"), default=None,
                        help="box: sqrt(w*h) of the face box (AFLW); interocular: outer eye corners (300W); "
                        "default: the protocol's")
    parser.add_argument("--iou", type=float, default=None, help="IoU to match a prediction to a face "
                        "(default: the protocol's, else 0.4)")
    parser.add_argument("--threshold", type=float, default=0.08, help="AUC / failure-rate threshold (e.g. 0.08, 0.10)")
    parser.add_argument("--max-error", type=float, default=None, help="x range of the CED plot")
    parser.add_argument("--plot", default=None, help="write the CED curve to this .png")
    parser.add_argument("--json", default=None, help="write the metrics to this .json")
    parser.add_argument("--per-face", action="store_true", help="include every face's error in the JSON")
