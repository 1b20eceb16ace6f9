"""WIDER FACE validation evaluation, exactly as the official MATLAB ``eval_tools`` computes it.

One job per module; this one keeps the public names in one place:

* :mod:`~maskface.evaluation.widerface_gt`: the ground truth (official ``.mat`` files or the
  ``*_bbx_gt.txt`` annotation) -> :class:`WiderFaceGT`;
* :mod:`~maskface.evaluation.widerface_submission`: the submission layout
  (``<pred_dir>/<event>/<image>.txt``), writer and reader;
* :mod:`~maskface.evaluation.widerface_overlap`: which face each prediction matches (the official
  int32 ``boxoverlap``, or real IoU);
* :mod:`~maskface.evaluation.widerface_protocol`: score normalisation, thresholds, PR counts, AP
  (``wider_eval.m`` / ``norm_score.m`` / ``evaluation.m``), step by step;
* :mod:`~maskface.evaluation.widerface_result`: the result (AP, curves, JSON).
"""
from maskface.evaluation.widerface_gt import (GT_ENV_VAR, GT_FILES, SETTINGS, TEXT_GT_FILE, TEXT_SETTING,
                                              WiderFaceGT, default_gt_dir, find_gt_dir, load_widerface_gt,
                                              load_widerface_text_gt, strip_image_ext, text_gt_file)
from maskface.evaluation.widerface_overlap import (IOU_THRESHOLD, PROTOCOLS, assign_faces, overlap_continuous,
                                                   overlap_matlab)
from maskface.evaluation.widerface_protocol import (NUM_THRESHOLDS, evaluate_widerface, evaluate_widerface_dir,
                                                    normalise_scores, thresholds)
from maskface.evaluation.widerface_result import SettingCurve, WiderFaceResult
from maskface.evaluation.widerface_submission import (PredictionFormatError, prediction_path, read_prediction_file,
                                                      read_predictions, write_predictions)

__all__ = [
    "GT_ENV_VAR", "GT_FILES", "SETTINGS", "TEXT_GT_FILE", "TEXT_SETTING", "WiderFaceGT", "default_gt_dir",
    "find_gt_dir", "load_widerface_gt", "load_widerface_text_gt", "strip_image_ext", "text_gt_file",
    "IOU_THRESHOLD", "PROTOCOLS", "assign_faces", "overlap_continuous", "overlap_matlab",
    "NUM_THRESHOLDS", "evaluate_widerface", "evaluate_widerface_dir", "normalise_scores", "thresholds",
    "SettingCurve", "WiderFaceResult",
    "PredictionFormatError", "prediction_path", "read_prediction_file", "read_predictions", "write_predictions",
]
