"""
MODEL.ROI_BOX_CASCADE_HEAD.TEST_PRUNE_TOPK and TEST_PRUNE_NMS_THRESH: only the top-k stage-1
boxes, and only those that survive NMS among stage 1's refined boxes, reach stages 2..N.
"""

import pytest
import torch

from detectron2.layers import batched_nms
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage

from projects.cascade.modeling.roi_heads.pruning import keep_all
from projects.cascade.modeling.stage_outputs import features_and_proposals
from tests.helpers import assert_same_detections, build, synthetic_batch, tiny_cfg


def _model(k, test_score="mean", nms_thresh=1.0):
    cfg = tiny_cfg(TEST_PRUNE_TOPK=k, TEST_PRUNE_NMS_THRESH=nms_thresh, TEST_SCORE=test_score)
    return build(cfg, seed=0).eval()


def _top_rows(heads, features, proposals, k):
    """The top-k rows of each image by stage-1 foreground score, in their original order."""
    stage1 = heads.run_stages([features[f] for f in heads.box_in_features], proposals, 1)[0]
    probs = heads.box_predictor[0].predict_probs(stage1.predictions, stage1.proposals)
    rows = [p[:, :-1].max(dim=1).values.topk(min(k, len(p))).indices.sort().values for p in probs]
    return stage1, rows


@pytest.mark.parametrize("k", [64, 1000])
@pytest.mark.parametrize("test_score", ["mean", "mean_on_final", "last"])
def test_k_at_least_the_proposals_changes_nothing(k, test_score):
    batch = synthetic_batch()
    off, pruned = _model(0, test_score), _model(k, test_score)  # 64 = RPN POST_NMS_TOPK_TEST
    with torch.no_grad():
        expected, got = off(batch), pruned(batch)
    assert_same_detections(expected, got)


@pytest.mark.parametrize("test_score", ["mean", "mean_on_final", "last"])
def test_later_stages_run_on_exactly_the_top_k_rows(test_score):
    k = 10
    model = _model(k, test_score)
    heads = model.roi_heads
    batch = synthetic_batch()
    images, features, proposals = features_and_proposals(model, batch)
    assert all(len(p) > k for p in proposals), "the test needs more than k proposals"
    box_features = [features[f] for f in heads.box_in_features]
    with torch.no_grad():
        full_stage1, rows = _top_rows(heads, features, proposals, k)
        stages = heads.run_stages(box_features, proposals, heads.num_test_stages)

    # Stage 1 keeps exactly those rows of its outputs...
    for i, r in enumerate(rows):
        assert torch.equal(
            stages[0].proposals[i].proposal_boxes.tensor, proposals[i].proposal_boxes.tensor[r]
        )
        assert torch.equal(stages[0].regressed_boxes[i], full_stage1.regressed_boxes[i][r])
        # ...and stage 2 starts from exactly the boxes stage 1 refined for them.
        expected = Boxes(full_stage1.next_stage_boxes[i][r].clone())
        expected.clip(proposals[i].image_size)
        assert torch.equal(stages[1].proposals[i].proposal_boxes.tensor, expected.tensor)
    offsets = [0, len(proposals[0])]
    flat = torch.cat([r + o for r, o in zip(rows, offsets)])
    for got, full in zip(stages[0].predictions, full_stage1.predictions):
        assert torch.equal(got, full[flat])
    assert all(len(p) == k for s in stages for p in s.proposals)

    # The detections are those of an unpruned cascade run on the top-k proposals alone.
    with torch.no_grad():
        got = heads(images, features, proposals)[0]
        heads.prune = keep_all
        expected = heads(images, features, [p[r] for p, r in zip(proposals, rows)])[0]
    assert sum(len(e) for e in expected) > 0
    for e, g in zip(expected, got):
        assert len(e) == len(g)
        assert torch.equal(e.pred_classes, g.pred_classes)
        torch.testing.assert_close(g.pred_boxes.tensor, e.pred_boxes.tensor)
        torch.testing.assert_close(g.scores, e.scores)


def test_pruned_boxes_are_dropped_from_the_detections():
    """A box pruned after stage 1 has no later-stage score to average, so it is not reported."""
    k = 3
    model = _model(k)
    model.roi_heads.box_predictor[-1].test_score_thresh = 0.0
    batch = synthetic_batch()
    with torch.no_grad():
        out = model(batch)
    num_classes = model.roi_heads.num_classes
    for r in out:
        # class-agnostic boxes: at most one detection per kept box and class
        assert 0 < len(r["instances"]) <= k * num_classes


@pytest.mark.parametrize("k", [0, 7])
def test_later_stages_run_on_exactly_the_nms_survivors(k):
    thresh = 0.3
    model = _model(k, nms_thresh=thresh)
    heads = model.roi_heads
    batch = synthetic_batch()
    _, features, proposals = features_and_proposals(model, batch)
    box_features = [features[f] for f in heads.box_in_features]
    with torch.no_grad():
        full = heads.run_stages(box_features, proposals, 1)[0]
        stages = heads.run_stages(box_features, proposals, heads.num_test_stages)
    probs = heads.box_predictor[0].predict_probs(full.predictions, full.proposals)
    for i, p in enumerate(probs):
        scores, classes = p[:, :-1].max(dim=1)
        survivors = batched_nms(full.next_stage_boxes[i], scores, classes, thresh)
        assert k < len(survivors) < len(p), "the test needs NMS to suppress some boxes, not all"
        rows = (survivors[:k] if k else survivors).sort().values
        assert torch.equal(
            stages[0].proposals[i].proposal_boxes.tensor, proposals[i].proposal_boxes.tensor[rows]
        )
        assert torch.equal(stages[0].next_stage_boxes[i], full.next_stage_boxes[i][rows])
        assert all(len(s.proposals[i]) == len(rows) for s in stages)


def test_training_ignores_pruning():
    batch = synthetic_batch()
    losses = []
    for k, nms_thresh in ((0, 1.0), (5, 0.3)):
        model = _model(k, nms_thresh=nms_thresh).train()
        torch.manual_seed(123)
        with EventStorage():
            losses.append(model(batch))
    assert losses[0].keys() == losses[1].keys()
    for name in losses[0]:
        assert torch.equal(losses[0][name], losses[1][name]), name
