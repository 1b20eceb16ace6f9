"""Validation-split choices of the trainer that fail loudly."""
import pytest

from maskface.data import synthetic
from maskface.engine.trainer import SMOKE_MODEL_OVERRIDES, Trainer, TrainOptions, default_val_split


def test_defaults_never_validate_on_a_test_split():
    assert default_val_split("widerface") == "val"
    assert default_val_split("aflw") == default_val_split("300w") == "holdout"


def test_holdout_with_a_separate_val_data_asks_for_its_split(tmp_path):
    root = tmp_path / "aflw"
    synthetic.write_aflw(root, splits=("train",), num_images=4, image_size=(64, 64), face_size=(28, 40))
    opts = TrainOptions(data=f"aflw:{root}", val_data=f"aflw:{root}", output_dir=str(tmp_path / "o"), config="mbv2",
                        model_overrides=SMOKE_MODEL_OVERRIDES, num_workers=0, progress=False)
    with pytest.raises(ValueError, match="pass --val-split SPLIT"):
        Trainer(opts)
