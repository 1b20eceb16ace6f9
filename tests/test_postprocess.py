import torch

from maskface.postprocess import decode_heatmaps, select_detections


def gaussian_logits(u0: float, v0: float, size: int = 56, sigma: float = 1.5) -> torch.Tensor:
    """Log of a Gaussian peaked at continuous heatmap coordinates (u0, v0); cell i spans [i, i+1)."""
    c = torch.arange(size, dtype=torch.float64) + 0.5
    return -((c[None, :] - u0) ** 2 + (c[:, None] - v0) ** 2) / (2 * sigma**2)


def test_heatmap_decoding_is_subpixel_accurate():
    roi = torch.tensor([[100.0, 50.0, 212.0, 218.0]])  # 112 x 168 px over 56 cells
    peaks = [(20.3, 31.85), (1.9, 55.2), (40.5, 7.0), (12.71, 12.29)]
    logits = torch.stack([gaussian_logits(u, v) for u, v in peaks]).unsqueeze(0).float()
    points, scores = decode_heatmaps(logits, roi)
    expected = torch.tensor([[100 + u * 2.0, 50 + v * 3.0] for u, v in peaks])
    err = (points[0] - expected).abs()
    # Interior peaks are exact for a Gaussian (parabola of the logits); the second has its y
    # peak in the last row of cells, where no refinement is possible along that axis (<= half a cell).
    assert err[[0, 2, 3]].max().item() < 1e-3
    assert err[1, 0].item() < 1e-3 and err[1, 1].item() <= 0.5 * 3.0 + 1e-4
    assert torch.all((scores > 0) & (scores <= 1))


def test_heatmap_decoding_handles_zero_rois():
    points, scores = decode_heatmaps(torch.zeros(0, 5, 56, 56), torch.zeros(0, 4))
    assert points.shape == (0, 5, 2) and scores.shape == (0, 5)


def test_select_detections_threshold_nms_and_cap_by_hand():
    boxes = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],  # 0.9
        [1.0, 0.0, 11.0, 10.0],  # 0.8, IoU 9/11 = 0.82 with box 0 -> suppressed
        [20.0, 20.0, 30.0, 30.0],  # 0.7
        [40.0, 40.0, 50.0, 50.0],  # 0.3 -> below threshold
        [60.0, 60.0, 60.0, 70.0],  # 0.95 but zero width -> dropped
        [80.0, 80.0, 90.0, 90.0],  # 0.6
    ])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.3, 0.95, 0.6])
    assert select_detections(scores, boxes, 0.5, 0.4, 10).tolist() == [0, 2, 5]
    assert select_detections(scores, boxes, 0.5, 0.4, 2).tolist() == [0, 2]
    assert select_detections(scores, boxes, 0.5, 0.9, 10).tolist() == [0, 1, 2, 5]
    assert select_detections(scores, boxes, 0.99, 0.4, 10).numel() == 0
