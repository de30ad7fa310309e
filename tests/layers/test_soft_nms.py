"""Soft-NMS (TEST_NMS_METHOD linear / gaussian) against a plain reference implementation."""

import math

import pytest
import torch

from projects.cascade.layers.soft_nms import batched_soft_nms, soft_nms


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_soft_nms(boxes, scores, method, iou_threshold, sigma, min_score):
    """Bodla et al.'s Algorithm 1, on Python lists, one box at a time."""
    boxes, scores = boxes.tolist(), scores.tolist()
    remaining = [i for i in range(len(boxes)) if scores[i] >= min_score]
    kept, kept_scores = [], []
    while remaining:
        best = max(remaining, key=lambda i: (scores[i], -i))  # ties: the lower index
        remaining.remove(best)
        kept.append(best)
        kept_scores.append(scores[best])
        for i in remaining:
            iou = _iou(boxes[best], boxes[i])
            if method == "linear":
                if iou > iou_threshold:
                    scores[i] *= 1.0 - iou
            else:
                scores[i] *= math.exp(-(iou * iou) / sigma)
        remaining = [i for i in remaining if scores[i] >= min_score]
    return kept, kept_scores


def _random_boxes(n, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 60
    wh = 5 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 30
    scores = torch.rand(n, generator=g, dtype=torch.float64)
    return torch.cat([xy, xy + wh], dim=1), scores


@pytest.mark.parametrize("method", ["linear", "gaussian"])
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("iou_threshold, sigma, min_score", [(0.3, 0.5, 0.001), (0.5, 0.2, 0.05)])
def test_soft_nms_equals_the_reference(method, seed, iou_threshold, sigma, min_score):
    boxes, scores = _random_boxes(40, seed)
    keep, decayed = soft_nms(boxes, scores, method, iou_threshold, sigma, min_score)
    expected_keep, expected_scores = reference_soft_nms(
        boxes, scores, method, iou_threshold, sigma, min_score
    )
    assert keep.tolist() == expected_keep
    torch.testing.assert_close(
        decayed, torch.tensor(expected_scores, dtype=torch.float64), rtol=1e-12, atol=0
    )
    assert len(keep) > 5 and (decayed < scores[keep]).any(), "the case must decay some scores"


def test_hand_computed_case():
    boxes = torch.tensor(
        [[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10]], dtype=torch.float32
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    keep, decayed = soft_nms(boxes, scores, "linear", 0.3, 0.5, 0.001)
    # Box 1 overlaps box 0 by 90/110; box 3 is box 0, so (1 - IoU) = 0 drops it.
    assert keep.tolist() == [0, 2, 1]
    torch.testing.assert_close(decayed, torch.tensor([0.9, 0.7, 0.8 * (1 - 90 / 110)]))
    keep, decayed = soft_nms(boxes, scores, "gaussian", 0.3, 0.5, 0.001)
    assert keep.tolist() == [0, 2, 1, 3]
    # Box 3: IoU 1 with box 0, then 90/110 with box 1.
    expected = 0.6 * math.exp(-1 / 0.5) * math.exp(-((90 / 110) ** 2) / 0.5)
    torch.testing.assert_close(decayed[3], torch.tensor(expected))


def test_categories_do_not_decay_each_other():
    boxes, scores = _random_boxes(30, seed=7)
    classes = torch.arange(30) % 3
    keep, decayed = batched_soft_nms(boxes, scores, classes, "gaussian", 0.3, 0.5, 0.001)
    for c in range(3):
        members = torch.nonzero(classes == c).squeeze(1)
        own_keep, own_scores = soft_nms(
            boxes[members], scores[members], "gaussian", 0.3, 0.5, 0.001
        )
        in_class = classes[keep] == c
        assert keep[in_class].tolist() == members[own_keep].tolist()
        torch.testing.assert_close(decayed[in_class], own_scores)
    assert torch.all(decayed[:-1] >= decayed[1:]), "sorted by decayed score"


def test_empty_input():
    keep, decayed = batched_soft_nms(
        torch.zeros(0, 4),
        torch.zeros(0),
        torch.zeros(0, dtype=torch.int64),
        "linear",
        0.5,
        0.5,
        0.001,
    )
    assert keep.numel() == 0 and decayed.numel() == 0
