"""
Test-time pruning between stage 1 and stage 2 (TEST_PRUNE_NMS_THRESH, TEST_PRUNE_TOPK).
Stages 2..N cost as much as stage 1 on every box, yet after stage 1 most boxes are
background or near-copies of each other; sending fewer on is what cuts the cascade's cost.
"""

import torch

from detectron2.layers import batched_nms, cat

from .nonfinite import finite_or_zero, finite_rows

__all__ = ["StagePruner", "keep_all"]


def keep_all(stage, predictor):
    """No pruning: every row goes on."""
    return stage


class StagePruner:
    """
    Keeps the rows of each image that survive NMS at `nms_thresh` among the boxes stage 1
    refined, then the `topk` of them with the highest foreground score (the best
    non-background class probability), in their original order. The rows dropped are
    dropped from the detections too: with TEST_SCORE "mean" a row's score is the mean over
    every stage, and a stage-1 score alone would not be comparable with it.
    """

    def __init__(self, topk: int, nms_thresh: float):
        """
        Args:
            topk: rows kept per image; 0 keeps every NMS survivor.
            nms_thresh: IoU of the NMS; 1.0 skips it.
        """
        self.topk = topk
        self.nms_thresh = nms_thresh

    def __call__(self, stage, predictor):
        """`stage` (stage 1's outputs) with only the kept rows; `predictor` is stage 1's."""
        probs = predictor.predict_probs(stage.predictions, stage.proposals)
        finite = finite_rows([stage])
        nms_boxes = finite_or_zero(stage.next_stage_boxes)  # NMS needs finite boxes
        keep = [self._rows(p, b, ok) for p, b, ok in zip(probs, nms_boxes, finite)]
        flat = cat([rows + start for rows, start in zip(keep, _offsets(probs))])
        return stage._replace(
            predictions=tuple(x[flat] for x in stage.predictions),
            proposals=[p[rows] for p, rows in zip(stage.proposals, keep)],
            regressed_boxes=[b[rows] for b, rows in zip(stage.regressed_boxes, keep)],
            next_stage_boxes=[b[rows] for b, rows in zip(stage.next_stage_boxes, keep)],
        )

    def _rows(self, probs, boxes, finite):
        fg_scores, top_classes = probs[:, :-1].max(dim=1)
        # A row that became non-finite gives no detection (nonfinite.py): it takes no place.
        fg_scores = torch.where(finite, fg_scores, torch.full_like(fg_scores, -float("inf")))
        if self.nms_thresh < 1.0:
            # Sorted by score, so the top-k is a slice.
            rows = batched_nms(boxes, fg_scores, top_classes, self.nms_thresh)
            if self.topk > 0:
                rows = rows[: self.topk]
        else:
            # No Python branch on the number of rows: tracing would fix it to the traced
            # image's, and an exported model would fail on images with fewer than topk.
            k = torch.clamp(torch.as_tensor(len(fg_scores)), max=self.topk)
            rows = fg_scores.topk(k).indices
        return rows.sort().values


def _offsets(tensors):
    """Where each of `tensors` starts in their concatenation."""
    offsets, start = [], 0
    for t in tensors:
        offsets.append(start)
        start += len(t)
    return offsets
