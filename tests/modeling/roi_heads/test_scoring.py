"""TEST_SCORE: how the stages' class scores make the final ones (scoring.py)."""

import pytest
import torch
import torch.nn.functional as F

from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import Boxes

from tests.helpers import build, build_like, synthetic_batch, tiny_cfg


def _manual_cascade(heads, features, proposals):
    """Each stage's (probabilities, regressed boxes) on one image, and the final boxes' features."""
    (proposals,) = proposals
    features = [features[f] for f in heads.box_in_features]
    boxes = proposals.proposal_boxes
    stages = []
    for head, predictor in zip(heads.box_head, heads.box_predictor):
        logits, deltas = predictor(head(heads.box_pooler(features, [boxes])))
        regressed = predictor.box2box_transform.apply_deltas(deltas, boxes.tensor)
        stages.append((F.softmax(logits, dim=-1), regressed))
        boxes = Boxes(regressed.clone())
        boxes.clip(proposals.image_size)
    return stages, heads.box_pooler(features, [boxes])


def _detect(heads, boxes, scores, image_size):
    last = heads.box_predictor[-1]
    instances, _ = fast_rcnn_inference(
        [boxes],
        [scores],
        [image_size],
        last.test_score_thresh,
        last.test_nms_thresh,
        last.test_topk_per_image,
    )
    return instances[0]


def _assert_close_detections(got, expected):
    torch.testing.assert_close(got.pred_boxes.tensor, expected.pred_boxes.tensor)
    torch.testing.assert_close(got.scores, expected.scores)
    assert torch.equal(got.pred_classes, expected.pred_classes)


@pytest.fixture(scope="module")
def scoring_setup():
    """A model and one image, the RPN's proposals and the backbone features."""
    model = build(tiny_cfg())
    batch = synthetic_batch()[:1]
    model.eval()
    images = model.preprocess_image(batch)
    with torch.no_grad():
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features)
    return model, images, features, proposals


def _detections_with(scoring_setup, test_score):
    model, images, features, proposals = scoring_setup
    model = build_like(model, tiny_cfg(TEST_SCORE=test_score)).eval()
    with torch.no_grad():
        instances, _ = model.roi_heads(images, features, proposals)
    return instances[0]


def test_mean_on_final_scores_the_final_boxes_with_every_stage(scoring_setup):
    model, _, features, proposals = scoring_setup
    heads = model.roi_heads
    with torch.no_grad():
        stages, final_features = _manual_cascade(heads, features, proposals)
        probs = [
            F.softmax(predictor(head(final_features))[0], dim=-1)
            for head, predictor in zip(heads.box_head, heads.box_predictor)
        ]
    expected = _detect(heads, stages[-1][1], sum(probs) * (1.0 / 3), proposals[0].image_size)
    got = _detections_with(scoring_setup, "mean_on_final")
    _assert_close_detections(got, expected)
    mean = _detections_with(scoring_setup, "mean")
    assert not torch.allclose(got.scores[:10], mean.scores[:10])


def test_last_keeps_the_last_stage_own_softmax(scoring_setup):
    model, _, features, proposals = scoring_setup
    with torch.no_grad():
        stages, _ = _manual_cascade(model.roi_heads, features, proposals)
    last_probs, last_boxes = stages[-1]
    expected = _detect(model.roi_heads, last_boxes, last_probs, proposals[0].image_size)
    _assert_close_detections(_detections_with(scoring_setup, "last"), expected)
