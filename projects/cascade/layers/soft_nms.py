"""
Soft-NMS (Bodla et al., ICCV 2017): instead of removing the boxes that overlap a kept box,
lower their scores, so that touching objects (tree crowns, crowds) keep their own boxes.
"""

from typing import Tuple

import torch
from torchvision.ops import box_iou

__all__ = ["SOFT_NMS_METHODS", "soft_nms", "batched_soft_nms"]


def _linear_decay(iou_threshold, sigma):
    return lambda iou: torch.where(iou > iou_threshold, 1.0 - iou, torch.ones_like(iou))


def _gaussian_decay(iou_threshold, sigma):
    return lambda iou: torch.exp(-(iou * iou) / sigma)


_DECAYS = {"linear": _linear_decay, "gaussian": _gaussian_decay}
SOFT_NMS_METHODS = tuple(_DECAYS)


def soft_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    method: str,
    iou_threshold: float,
    sigma: float,
    min_score: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Repeatedly keep the box of highest score, and decay the scores of the others by their
    IoU with it: "linear" multiplies by (1 - IoU) where IoU > `iou_threshold`, "gaussian" by
    exp(-IoU^2 / `sigma`). A box whose score falls below `min_score` is dropped.

    Args:
        boxes: (N, 4) XYXY. scores: (N,).

    Returns:
        the indices of the kept boxes, in the order they were kept (by decayed score,
        highest first; ties to the lower index), and their decayed scores.
    """
    if method not in _DECAYS:
        raise ValueError(f"Unknown soft-NMS method {method!r}; expected one of {SOFT_NMS_METHODS}.")
    decay_by = _DECAYS[method](iou_threshold, sigma)
    scores = scores.clone()
    iou = box_iou(boxes, boxes)
    alive = scores >= min_score
    order = []
    for _ in range(len(scores)):
        candidates = torch.where(alive, scores, torch.full_like(scores, -float("inf")))
        best = int(candidates.argmax())
        if not alive[best]:
            break
        order.append(best)
        alive[best] = False
        scores = torch.where(alive, scores * decay_by(iou[best]), scores)
        alive &= scores >= min_score
    keep = torch.as_tensor(order, dtype=torch.int64, device=boxes.device)
    return keep, scores[keep]


def batched_soft_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    idxs: torch.Tensor,
    method: str,
    iou_threshold: float,
    sigma: float,
    min_score: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    `soft_nms` within each category of `idxs` (boxes of other categories do not decay each
    other). Returns the kept indices and their decayed scores, by decayed score, highest
    first; ties in the order of the categories, then in the order kept.
    """
    kept, decayed = [], []
    for category in torch.unique(idxs):
        members = torch.nonzero(idxs == category).squeeze(1)
        keep, new_scores = soft_nms(
            boxes[members], scores[members], method, iou_threshold, sigma, min_score
        )
        kept.append(members[keep])
        decayed.append(new_scores)
    if not kept:
        return idxs.new_zeros(0), scores.new_zeros(0)
    kept, decayed = torch.cat(kept), torch.cat(decayed)
    order = torch.sort(decayed, descending=True, stable=True).indices
    return kept[order], decayed[order]
