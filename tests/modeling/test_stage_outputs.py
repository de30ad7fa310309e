"""
CascadeStageOutputs and detections_by_stage: the model's own detections, with the box every
stage gave each of them, and the detections of every stage and ensemble.
"""

import pytest
import torch

from detectron2.structures import Boxes, Instances

from projects.cascade.errors import ConfigError
from projects.cascade.modeling.stage_outputs import CascadeStageOutputs, detections_by_stage
from tests.helpers import (
    assert_same_detections,
    build,
    regressed,
    rescaled_inputs,
    set_predictor,
    synthetic_batch,
    tiny_cfg,
)

SIZES = ((128, 160), (96, 128), (112, 112))
UPSCALE = 1.5  # the "original" images are larger than the network's input


@pytest.mark.parametrize("mask", [False, True])
def test_outputs_are_the_model_own(mask):
    model = build(tiny_cfg(mask=mask)).eval()
    inputs = rescaled_inputs(SIZES, UPSCALE, with_masks=mask)
    with torch.no_grad():
        expected, got = model(inputs), CascadeStageOutputs(model)(inputs)
    assert_same_detections(expected, got, masks=mask)
    for g in got:
        # stage_boxes are rescaled with the boxes: the last stage's box is the detection's.
        torch.testing.assert_close(
            g["instances"].stage_boxes[:, -1], g["instances"].pred_boxes.tensor
        )


# ----------------------------------------------------------------- stage_boxes


@pytest.mark.parametrize("class_specific", [False, True])
def test_stage_boxes_follow_each_detection_through_the_stages(class_specific):
    """
    Stage k moves every box right by (k + 1) / 10 of its width, by (c + 1) / 10 more for
    class c with class-specific regression. Every stage scores class 1 first, then class 0,
    so with class-specific regression class 1's box goes on to the next stage.
    """
    model = build(tiny_cfg(class_specific=class_specific)).eval()
    heads = model.roi_heads
    num_stages, num_classes = 3, 3

    def shift(stage, c):
        return float(stage + 1) + (c + 1) * class_specific

    for k, predictor in enumerate(heads.box_predictor):
        deltas = [d for c in range(num_classes) for d in (shift(k, c), 0.0, 0.0, 0.0)]
        set_predictor(predictor, [1.0, 2.0, 0.5, 0.0], deltas[: predictor.bbox_pred.out_features])
    heads.box_predictor[-1].test_score_thresh = 0.2  # detect classes 0 and 1
    batch = synthetic_batch(sizes=SIZES[:1])
    images = model.preprocess_image(batch)
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(20, 2, generator=g) * 100
    proposals = Instances(images.image_sizes[0], proposal_boxes=Boxes(torch.cat([xy, xy + 20], 1)))
    with torch.no_grad():
        features = model.backbone(images.tensor)
        (detections,), _ = detections_by_stage(heads, features, [proposals])

    assert set(detections.pred_classes.tolist()) == {0, 1}
    stage_boxes = detections.stage_boxes
    assert stage_boxes.shape == (len(detections), 1 + num_stages, 4)
    distances = torch.cdist(stage_boxes[:, 0], proposals.proposal_boxes.tensor, p=float("inf"))
    assert (distances.min(dim=1).values < 1e-4).all(), "column 0 holds the proposals"
    for k, predictor in enumerate(heads.box_predictor):
        for c in (0, 1):
            of_class = detections.pred_classes == c
            moved_as = c if k == num_stages - 1 else 1  # the detected class at the end
            delta = torch.tensor([shift(k, moved_as), 0.0, 0.0, 0.0])
            expected = regressed(predictor, delta, stage_boxes[of_class, k], detections.image_size)
            torch.testing.assert_close(stage_boxes[of_class, k + 1], expected)
    torch.testing.assert_close(stage_boxes[:, -1], detections.pred_boxes.tensor)


def test_needs_the_cascade_heads():
    cfg = tiny_cfg(roi_heads="StandardROIHeads")
    with pytest.raises(ConfigError, match="CascadeRCNNROIHeads"):
        CascadeStageOutputs(build(cfg))
