"""`maskface predict-widerface` (maskface/engine/predict_widerface.py): input errors, and the
submission layout it writes for a checkpoint, read back with the evaluation's reader."""
from __future__ import annotations

import cv2
import numpy as np

from maskface.cli import main


def test_predict_widerface_cli_input_errors(tmp_path, capsys):
    assert main(["predict-widerface", "--checkpoint", str(tmp_path / "c.pth"), "--images", str(tmp_path / "no"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "image folder not found" in capsys.readouterr().err
    assert main(["predict-widerface", "--checkpoint", str(tmp_path / "c.pth"), "--images", str(tmp_path),
                 "--out", str(tmp_path / "o")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_predict_widerface_writes_the_submission_layout(tmp_path):
    import torch

    from maskface import build_model
    from maskface.checkpoint import save_checkpoint
    from maskface.evaluation.widerface import read_prediction_file

    torch.manual_seed(0)
    model = build_model("mbv2")
    ckpt = tmp_path / "mbv2.pth"
    save_checkpoint(ckpt, model, model.cfg)
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    for event, name, (h, w) in (("0--Parade", "0_Parade_a_1", (96, 160)), ("1--Handshaking", "1_Hand_b_2", (128, 96))):
        (images / event).mkdir(parents=True)
        cv2.imwrite(str(images / event / f"{name}.jpg"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    out = tmp_path / "pred"
    # an untrained model with threshold 0 still returns its best candidates
    rc = main(["predict-widerface", "--checkpoint", str(ckpt), "--images", str(images), "--out", str(out),
               "--tta", "--tta-scales", "1", "--score-threshold", "0", "--max-detections", "8", "--quiet"])
    assert rc == 0
    a = read_prediction_file(out / "0--Parade" / "0_Parade_a_1.txt")
    b = read_prediction_file(out / "1--Handshaking" / "1_Hand_b_2.txt")
    assert 0 < len(a) <= 8 and 0 < len(b) <= 8
    assert (out / "0--Parade" / "0_Parade_a_1.txt").read_text().splitlines()[0] == "0_Parade_a_1"
    # x y w h inside the image (boxes are clipped to it by the predictor)
    assert (a[:, 0] >= 0).all() and (a[:, 0] + a[:, 2] <= 160 + 1e-3).all() and (a[:, 2] >= 0).all()
    assert np.all(np.diff(a[:, 4]) <= 0)  # sorted by score
    # --resume skips what exists; without --tta one pass
    (out / "0--Parade" / "0_Parade_a_1.txt").unlink()
    rc = main(["predict-widerface", "--checkpoint", str(ckpt), "--images", str(images), "--out", str(out),
               "--score-threshold", "0", "--max-detections", "3", "--resume", "--quiet"])
    assert rc == 0
    assert len(read_prediction_file(out / "0--Parade" / "0_Parade_a_1.txt")) == 3
    assert len(read_prediction_file(out / "1--Handshaking" / "1_Hand_b_2.txt")) == len(b)
