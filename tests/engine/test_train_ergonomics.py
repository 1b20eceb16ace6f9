"""Training ergonomics: SIGTERM during `maskface train --config tiny` writes a resumable last.pth
(the same command resumes and the iteration count continues); validation says what it is doing."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from maskface.checkpoint import read_checkpoint
from maskface.data import synthetic

REPO = Path(__file__).resolve().parents[2]


def _command(root: Path, out: Path, max_iter: int, workers: int = 0) -> list[str]:
    return [sys.executable, "-m", "maskface.cli", "train", "--config", "tiny", "--data", f"widerface:{root}",
            "--val-data", "none", "--output", str(out), "--batch-size", "2", "--max-iter", str(max_iter),
            "--warmup-iters", "3", "--crop-size", "64", "--scale-range", "0.8", "1.25", "--area-range", "16", "1e9",
            "--workers", str(workers), "--no-progress", "--log-period", "1", "--checkpoint-period", "100000"]


def _records(out: Path) -> list[dict]:
    path = out / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_sigterm_writes_last_pth_and_resume_continues(tmp_path):
    root = tmp_path / "data"
    synthetic.write_widerface(root, splits=("train",), num_images=4, image_size=(64, 64), face_size=(24, 48),
                              faces_per_image=(1, 1), empty_images=0, seed=11)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(_command(root, out, 100000), env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240  # a guard against a hung child, not a speed check
        while not any(r.get("type") == "train" and r["iter"] >= 3 for r in _records(out)):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "training did not reach iteration 3"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "SIGTERM" in stderr + stdout
    stopped_at = read_checkpoint(out / "last.pth")["iteration"]
    assert stopped_at >= 3
    assert not (out / "model_final.pth").exists()  # interrupted, not finished
    interrupted = [r for r in _records(out) if r["type"] == "interrupted"]
    assert [r["iter"] for r in interrupted] == [stopped_at] and interrupted[0]["signal"] == "SIGTERM"

    done = subprocess.run(_command(root, out, stopped_at + 2), env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"resumed from {out / 'last.pth'} at iteration {stopped_at}" in done.stdout + done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["iteration"] == stopped_at + 2
    train_iters = [r["iter"] for r in _records(out) if r["type"] == "train"]
    assert train_iters[-2:] == [stopped_at + 1, stopped_at + 2]
    assert read_checkpoint(out / "model_final.pth")["iteration"] == stopped_at + 2


def test_sigterm_to_the_whole_process_group_still_writes_last_pth(tmp_path):
    """systemd / `kill -- -PGID` signal every process, data-loader workers included: the workers
    leave it to the trainer, which stops after its iteration with last.pth (before, the killed
    worker ended the run with "DataLoader worker ... is killed by signal: Terminated")."""
    root = tmp_path / "data"
    synthetic.write_widerface(root, splits=("train",), num_images=4, image_size=(64, 64), face_size=(24, 48),
                              faces_per_image=(1, 1), empty_images=0, seed=11)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(_command(root, out, 100000, workers=1), env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240  # a guard against a hung child, not a speed check
        while not any(r.get("type") == "train" and r["iter"] >= 3 for r in _records(out)):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "training did not reach iteration 3"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "DataLoader worker" not in stderr
    interrupted = [r for r in _records(out) if r["type"] == "interrupted"]
    assert len(interrupted) == 1 and read_checkpoint(out / "last.pth")["iteration"] == interrupted[0]["iter"] >= 3


def test_validation_says_what_it_is_doing(tmp_path, capsys):
    import torch

    from maskface.engine.trainer import Trainer, TrainOptions

    root = tmp_path / "data"
    synthetic.write_widerface(root, splits=("train", "val"), num_images=3, image_size=(64, 64), face_size=(24, 48),
                              faces_per_image=(1, 1), empty_images=0, seed=5)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = Trainer(TrainOptions(data=f"widerface:{root}", output_dir=str(tmp_path / "run"), config="tiny",
                                       batch_size=2, crop_size=64, num_workers=0, progress=False, val_max_side=None))
        metrics = trainer.evaluate()
    finally:
        torch.set_num_threads(before)
    assert "validating 3 images at iteration 0" in capsys.readouterr().out
    assert metrics["num_faces"] == 3


def test_plot_log_draws_losses_lr_and_validation(tmp_path):
    import pytest

    from maskface.cli import main
    from maskface.engine.plot_log import read_log

    records = [{"type": "start", "iter": 0}]
    records += [{"type": "train", "iter": i, "lr": 1e-3 * i, "loss": 3.0 / i, "loss_cls": 1.0 / i,
                 "loss_box": 1.0 / i, "loss_keypoint": 1.0 / i} for i in range(1, 11)]
    records += [{"type": "val", "iter": 5, "ap50": 0.3, "metric": "ap50", "best": 0.3},
                {"type": "val", "iter": 10, "ap50": 0.6, "metric": "ap50", "best": 0.6}]
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"type": "train", "it')  # cut by a crash
    train, val = read_log(log)
    assert [r["iter"] for r in train] == list(range(1, 11)) and [r["ap50"] for r in val] == [0.3, 0.6]
    assert main(["plot-log", str(log), "--out", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from maskface.engine.plot_log import best_value

    assert best_value(val[-1]) == 0.6
    assert best_value({"metric": "nme", "nme": 0.092, "best": -0.092}) == 0.092  # drawn as NME, not -NME

    log.write_text('{"type": "train", "iter": 1}\nnot json\n{"type": "train", "iter": 2}\n')
    with pytest.raises(ValueError, match=":2: not a JSON record"):
        read_log(log)
