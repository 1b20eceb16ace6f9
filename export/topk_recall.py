"""What capping the detector's in-graph top-k at TensorRT's 3840 (was 5000) costs in final detections.

    python export/topk_recall.py --checkpoint runs/r50/best.pth --out runs/topk_recall      # a trained model
    python export/topk_recall.py --out runs/topk_recall                             # trains a brief one first

For every image (scikit-image's real photos + synthetic crowds of small faces), the PyTorch model's
candidates are taken with k = 5000 and with k = 3840, then the same score threshold + NMS + max
detections (maskface.postprocess.select_detections) run on each. Greedy NMS visits candidates by
score, so the k = 3840 result is the k = 5000 result minus the detections whose candidate ranks
beyond 3840; the report counts them, per score threshold (the serving default 0.5 and the 0.02 of
the evaluation protocol), with the number of candidates above the threshold (k only matters when
that exceeds 3840). Detections can also differ where candidates share an exact score (a saturated
sigmoid): their order, and so which one NMS keeps, depends on the top-k call; the report counts
those ties and, separately, the detections the cap itself removes (candidate rank > 3840).
Writes topk_recall.json and topk_recall.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch


from maskface.io_utils import atomic_write_bytes, atomic_write_json
from maskface.postprocess import select_detections, top_candidates
from maskface.preprocess import prepare_image

SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "camera",
                  "coins", "page", "horse", "retina", "gravel")


def real_photos() -> dict[str, np.ndarray]:
    from skimage import data

    photos = {}
    for name in SKIMAGE_PHOTOS:
        image = np.asarray(getattr(data, name)())
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        photos[f"skimage:{name}"] = np.ascontiguousarray(image[..., :3][:, :, ::-1]).astype(np.uint8)
    return photos


def synthetic_crowds(count: int, seed: int = 5) -> dict[str, np.ndarray]:
    """640x480 images with 20-150 faces of 12-40 px (crowds are where many candidates score high)."""
    from maskface.data import synthetic
    from maskface.io_utils import read_image

    with tempfile.TemporaryDirectory() as tmp:
        items = synthetic.write_widerface(tmp, splits=("val",), num_images=count, image_size=(480, 640),
                                          faces_per_image=(20, 150), face_size=(12, 40), seed=seed,
                                          empty_images=0)["val"]
        return {f"synthetic:{i}:{len(it.boxes)}faces": read_image(it.path) for i, it in enumerate(items)}


def brief_model(work: Path, iterations: int = 150):
    """The smoke recipe of tests/export/test_pipeline_parity.py, trained a little longer on more faces."""
    from maskface.checkpoint import load_model
    from maskface.data import synthetic
    from maskface.engine.trainer import SMOKE_MODEL_OVERRIDES, TrainOptions, train

    root = work / "faces"
    synthetic.write_widerface(root, splits=("train",), num_images=8, image_size=(96, 96), face_size=(16, 48),
                              faces_per_image=(1, 4), empty_images=0, seed=11)
    out = work / "run"
    train(TrainOptions(
        data=f"widerface:{root}", output_dir=str(out), config="mbv2", model_overrides=SMOKE_MODEL_OVERRIDES,
        batch_size=2, max_iter=iterations, base_lr=0.02, warmup_iters=10, crop_size=96, scale_range=(1.0, 1.0),
        area_range=(16.0, 1e9), color=False, num_workers=0, progress=False, val_data="none",
        checkpoint_period=iterations, log_period=50, val_max_side=None,
    ))
    return load_model(out / "model_final.pth")


@torch.no_grad()
def compare(model, images: dict[str, np.ndarray], k_old: int = 5000, k_new: int = 3840,
            thresholds=(0.5, 0.02), max_side: int = 640) -> dict:
    inf = model.cfg.inference
    rows = []
    for name, image in images.items():
        x = torch.from_numpy(prepare_image(image, model.cfg.input, max_side=max_side).image)[None]
        features = model.context_features(x)
        logits, deltas = model.detection_head(features)
        anchors = model.anchors(features)
        cands = {k: top_candidates(logits, deltas, anchors, model.box_coder, k, x.shape[-2:]) for k in (k_old, k_new)}
        all_scores = torch.sigmoid(logits[0])
        for t in thresholds:
            kept, indices = {}, {}
            for k, (scores, boxes) in cands.items():
                keep = select_detections(scores[0], boxes[0], t, inf.nms_threshold, inf.max_detections)
                indices[k] = keep
                kept[k] = {tuple(np.round(b, 4)) + (round(float(s), 6),)
                           for b, s in zip(boxes[0, keep].numpy(), scores[0, keep].numpy())}
            same = len(kept[k_old] & kept[k_new])
            above = all_scores[all_scores >= t]
            rows.append({"image": name, "threshold": t, "anchors": int(all_scores.numel()),
                         "candidates_above": int(above.numel()),
                         # candidates above the threshold that share their exact score with another one:
                         # their order (and so NMS's choice among them) depends on the top-k call
                         "tied_above": int(above.numel() - torch.unique(above).numel()),
                         "detections_old": len(kept[k_old]), "detections_new": len(kept[k_new]), "identical": same,
                         # k = 5000 detections whose candidate ranks beyond k_new: what the cap itself removes
                         "lost_to_cap": int((indices[k_old] >= k_new).sum()),
                         "only_old": len(kept[k_old] - kept[k_new]), "only_new": len(kept[k_new] - kept[k_old])})
    summary = {}
    for t in thresholds:
        sel = [r for r in rows if r["threshold"] == t]
        old = sum(r["detections_old"] for r in sel)
        same = sum(r["identical"] for r in sel)
        summary[str(t)] = {"images": len(sel), "detections_old": old, "detections_new": sum(r["detections_new"] for r in sel),
                           "identical": same, "identical_fraction": same / old if old else None,
                           "lost_to_cap": sum(r["lost_to_cap"] for r in sel),
                           "tied_above": sum(r["tied_above"] for r in sel),
                           "max_candidates_above": max(r["candidates_above"] for r in sel),
                           "images_with_more_than_k_new_above": sum(r["candidates_above"] > k_new for r in sel)}
    return {"k_old": k_old, "k_new": k_new, "nms_threshold": inf.nms_threshold,
            "max_detections": inf.max_detections, "summary": summary, "rows": rows}


def to_markdown(report: dict) -> str:
    lines = [f"# Top-k {report['k_old']} -> {report['k_new']}: final detections kept", "",
             f"Model: {report.get('model', '?')}. NMS {report['nms_threshold']}, max detections "
             f"{report['max_detections']}.", "",
             "| score threshold | images | detections (k old) | detections (k new) | identical | fraction | "
             "lost to the cap (rank > k new) | tied scores above threshold | max candidates above threshold | "
             "images with > k new above |", "|---|---|---|---|---|---|---|---|---|---|"]
    for t, s in report["summary"].items():
        frac = "n/a" if s["identical_fraction"] is None else f"{s['identical_fraction']:.4f}"
        lines.append(f"| {t} | {s['images']} | {s['detections_old']} | {s['detections_new']} | {s['identical']} | "
                     f"{frac} | {s['lost_to_cap']} | {s['tied_above']} | {s['max_candidates_above']} | "
                     f"{s['images_with_more_than_k_new_above']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", help="trained model (default: train a brief one on synthetic faces first)")
    p.add_argument("--iterations", type=int, default=150, help="training iterations of the brief model")
    p.add_argument("--synthetic", type=int, default=6, help="synthetic crowd images")
    p.add_argument("--out", default="runs/topk_recall")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.checkpoint:
        from maskface.checkpoint import load_model

        model, label = load_model(args.checkpoint), f"checkpoint {args.checkpoint}"
    else:
        model, label = brief_model(out, args.iterations), f"mbv2 smoke model, {args.iterations} iterations on synthetic faces"
    model.eval()
    images = {**real_photos(), **synthetic_crowds(args.synthetic)}
    report = {"model": label, **compare(model, images)}
    atomic_write_json(out / "topk_recall.json", report)
    atomic_write_bytes(out / "topk_recall.md", to_markdown(report).encode())
    print(to_markdown(report))
    print(json.dumps(report["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
