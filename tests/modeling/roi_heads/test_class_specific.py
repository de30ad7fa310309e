"""
Class-specific box regression (MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG False), which the
built-in cascade rejects: the box each row hands to the next stage, and each class's own box.
"""

import pytest
import torch

from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage

from tests.helpers import (
    build,
    proposals_of,
    random_boxes,
    record_stage_inputs,
    regressed,
    rows_in,
    run_heads,
    set_predictor,
    synthetic_batch,
    tiny_cfg,
)

NUM_CLASSES = 3  # tiny_cfg's


def test_class_specific_regression_trains_and_predicts():
    model = build(tiny_cfg(class_specific=True))
    assert [p.bbox_pred.out_features for p in model.roi_heads.box_predictor] == [
        4 * NUM_CLASSES
    ] * 3
    batch = synthetic_batch()
    model.train()
    with EventStorage():
        losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box_reg_stage2"] > 0
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        assert len(model(batch)[0]["instances"]) > 0


def _class_deltas():
    """Class c moves a box by (c + 1) / 10 of its width, in stage 1's weighted units."""
    return [d for c in range(NUM_CLASSES) for d in (c + 1.0, 0.0, 0.0, 0.0)]


def _logits_favoring(top_class):
    """The background scores highest, so the pick must skip it; then `top_class`."""
    logits = [0.0] * NUM_CLASSES + [5.0]
    logits[top_class] = 1.0
    return logits


@pytest.mark.parametrize("top_class", [0, 2])
def test_class_specific_test_time_refinement_uses_top_foreground_class(monkeypatch, top_class):
    model = build(tiny_cfg(class_specific=True))
    first = model.roi_heads.box_predictor[0]
    set_predictor(first, _logits_favoring(top_class), _class_deltas())
    seen = record_stage_inputs(monkeypatch, model.roi_heads)
    batch = synthetic_batch()
    run_heads(model, batch, proposals_of(batch, random_boxes(batch, seed=1)))
    delta = _class_deltas()[4 * top_class : 4 * top_class + 4]
    for before, after in zip(seen[0], seen[1]):
        expected = regressed(first, delta, before.proposal_boxes.tensor, before.image_size)
        torch.testing.assert_close(after.proposal_boxes.tensor, expected)


def test_class_specific_training_refinement_uses_gt_class_of_positives(monkeypatch):
    model = build(tiny_cfg(class_specific=True))
    first = model.roi_heads.box_predictor[0]
    top_class = 2
    set_predictor(first, _logits_favoring(top_class), _class_deltas())
    seen = record_stage_inputs(monkeypatch, model.roi_heads)
    batch = synthetic_batch()
    with EventStorage():
        run_heads(model, batch, proposals_of(batch, random_boxes(batch, seed=1)), train=True)
    deltas = torch.tensor(_class_deltas()).view(NUM_CLASSES, 4)
    some_positive_of_another_class = False
    for before, after in zip(seen[0], seen[1]):
        is_fg = before.gt_classes < NUM_CLASSES
        classes = torch.where(is_fg, before.gt_classes, torch.tensor(top_class))
        some_positive_of_another_class |= bool((classes != top_class).any())
        expected = regressed(
            first, deltas[classes], before.proposal_boxes.tensor, before.image_size
        )
        expected = expected[Boxes(expected).nonempty()]
        torch.testing.assert_close(after.proposal_boxes.tensor, expected)
    assert some_positive_of_another_class, "the test needs positives of other classes"


def test_class_specific_detections_take_each_class_own_box(monkeypatch):
    model = build(tiny_cfg(class_specific=True))
    last = model.roi_heads.box_predictor[-1]
    # Equal foreground scores, so every box is detected under each class.
    set_predictor(last, [1.0] * NUM_CLASSES + [0.0], _class_deltas())
    seen = record_stage_inputs(monkeypatch, model.roi_heads)
    batch = synthetic_batch()
    instances, _ = run_heads(model, batch, proposals_of(batch, random_boxes(batch, seed=1)))
    deltas = torch.tensor(_class_deltas()).view(NUM_CLASSES, 4)
    for inputs, detections in zip(seen[-1], instances):
        assert set(detections.pred_classes.tolist()) == set(range(NUM_CLASSES))
        for c in range(NUM_CLASSES):
            boxes_of_class = regressed(
                last, deltas[c], inputs.proposal_boxes.tensor, inputs.image_size
            )
            detected = detections.pred_boxes.tensor[detections.pred_classes == c]
            assert rows_in(detected, boxes_of_class).all(), c
