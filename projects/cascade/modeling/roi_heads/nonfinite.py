"""
Non-finite values in the stages (inf or NaN features, scores or boxes). detectron2's built-in
cascade stops at `Boxes.clip` between stages ("Box tensor contains infinite or NaN!").

* At test time a row (one proposal, through the stages) whose class scores, box deltas or
  boxes become non-finite at any stage gives no detection. Its box goes on as the zero box,
  so that the next stage pools something, and every other row is computed as before.
* In training, a non-finite value stops the run with an error naming the stage and the
  iteration, before the optimizer steps, so the last checkpoint stays the last good one.
"""

from typing import List

import torch

from detectron2.utils.events import get_event_storage

__all__ = [
    "finite_or_zero",
    "finite_rows",
    "nan_where_nonfinite",
    "check_stage_outputs",
    "check_stage_losses",
]


def finite_or_zero(boxes: List[torch.Tensor]) -> List[torch.Tensor]:
    """The boxes, with the rows that are not finite replaced by the zero box."""
    return [
        torch.where(torch.isfinite(b).all(dim=1, keepdim=True), b, torch.zeros_like(b))
        for b in boxes
    ]


def finite_rows(stages) -> List[torch.Tensor]:
    """Per image, which rows had finite class scores, box deltas and boxes at every stage."""
    finite = None
    for stage in stages:
        logits, deltas = stage.predictions
        ok = torch.isfinite(logits).all(dim=1) & torch.isfinite(deltas).all(dim=1)
        ok = ok.split([len(p) for p in stage.proposals])
        ok = [o & torch.isfinite(b).all(dim=1) for o, b in zip(ok, stage.regressed_boxes)]
        finite = ok if finite is None else [f & o for f, o in zip(finite, ok)]
    return finite


def nan_where_nonfinite(scores: List[torch.Tensor], stages) -> List[torch.Tensor]:
    """`scores` with NaN in the rows of `finite_rows`' False: the final NMS drops such rows."""
    return [
        torch.where(ok[:, None], s, torch.full_like(s, float("nan")))
        for s, ok in zip(scores, finite_rows(stages))
    ]


def check_stage_outputs(stage_index: int, num_stages: int, values, features) -> None:
    """Training: raise FloatingPointError if a stage's scores, deltas or boxes are not finite."""
    if all(torch.isfinite(v).all() for v in values):
        return
    if all(torch.isfinite(f).all() for f in features):
        cause = "Its input features are finite: the stage's head diverged."
    else:
        cause = "The feature maps it pooled are already non-finite (the backbone or FPN)."
    raise FloatingPointError(
        f"Cascade stage {stage_index + 1} of {num_stages} (losses *_stage{stage_index}) produced "
        f"non-finite class scores, box deltas or boxes at iteration={_iteration()}. {cause}"
    )


def check_stage_losses(stage_index: int, losses) -> None:
    """Training: raise FloatingPointError naming the stage if one of its losses is not finite."""
    bad = [name for name, value in losses.items() if not torch.isfinite(value).all()]
    if bad:
        raise FloatingPointError(
            f"Cascade stage {stage_index + 1}'s losses {', '.join(bad)} are not finite at "
            f"iteration={_iteration()}."
        )


def _iteration():
    try:
        return get_event_storage().iter
    except AssertionError:  # outside a trainer: no event storage
        return "unknown"
