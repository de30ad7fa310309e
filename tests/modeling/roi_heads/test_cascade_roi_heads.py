"""
CascadeRCNNROIHeads: any number of stages, stage loss weights, gradient scaling, TEST_STAGE,
and the errors of a bad key or constructor argument.
"""

import re

import pytest
import torch

from detectron2.modeling import build_backbone, build_model
from detectron2.utils.events import EventStorage

from projects.cascade import CascadeRCNNROIHeads
from projects.cascade.modeling.roi_heads.scoring import mean_of_stages
from tests.helpers import (
    assert_same_detections,
    build,
    proposals_like_rpn,
    synthetic_batch,
    tiny_cfg,
)

KEY = "MODEL.ROI_BOX_CASCADE_HEAD"


@pytest.mark.parametrize("stages", [1, 2, 5])
def test_any_number_of_stages(stages):
    model = build(tiny_cfg(stages=stages))
    heads = model.roi_heads
    assert isinstance(heads, CascadeRCNNROIHeads)
    assert len(heads.box_head) == len(heads.box_predictor) == stages
    assert [m.thresholds[1] for m in heads.proposal_matchers] == [0.5, 0.6, 0.7, 0.75, 0.8][:stages]
    assert heads.box_predictor[-1].box2box_transform.weights == (
        10.0 * stages,
        10.0 * stages,
        5.0 * stages,
        5.0 * stages,
    )
    model.train()
    with EventStorage():
        losses = model(synthetic_batch())
    assert {f"loss_cls_stage{k}" for k in range(stages)} <= set(losses)
    model.eval()
    with torch.no_grad():
        assert len(model(synthetic_batch())[0]["instances"]) > 0


def _losses(cfg, batch):
    model = build(cfg, seed=0)
    model.train()
    torch.manual_seed(7)
    with EventStorage():
        return model(batch)


def test_stage_loss_weights_scale_each_stage():
    batch = synthetic_batch()
    plain = _losses(tiny_cfg(), batch)
    cfg = tiny_cfg()
    cfg.MODEL.ROI_BOX_CASCADE_HEAD.STAGE_LOSS_WEIGHTS = [1.0, 0.5, 0.25]
    weighted = _losses(cfg, batch)
    for stage, w in enumerate([1.0, 0.5, 0.25]):
        for name in ("loss_cls", "loss_box_reg"):
            key = f"{name}_stage{stage}"
            torch.testing.assert_close(weighted[key], plain[key] * w)
    assert torch.equal(weighted["loss_rpn_cls"], plain["loss_rpn_cls"])


def _feature_gradient(scale_feature_gradient):
    cfg = tiny_cfg()
    cfg.MODEL.ROI_BOX_CASCADE_HEAD.SCALE_FEATURE_GRADIENT = scale_feature_gradient
    model = build(cfg, seed=0)
    model.train()
    batch = synthetic_batch()
    images = model.preprocess_image(batch)
    features = {k: v.detach().requires_grad_() for k, v in model.backbone(images.tensor).items()}
    proposals = proposals_like_rpn(batch, seed=3)
    targets = [b["instances"] for b in batch]
    torch.manual_seed(5)
    with EventStorage():
        _, losses = model.roi_heads(images, features, proposals, targets)
    sum(losses.values()).backward()
    return features["p2"].grad


def test_feature_gradient_is_scaled_by_one_over_num_stages():
    scaled, full = _feature_gradient(True), _feature_gradient(False)
    assert full.abs().sum() > 0
    torch.testing.assert_close(scaled * 3, full, rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------------- TEST_STAGE


def _stage_of(name):
    """The stage of a per-stage parameter; -1 for shared ones."""
    match = re.match(r"roi_heads\.(box_head|box_predictor|mask_head)\.(\d+)\.", name)
    return int(match.group(2)) if match else -1


@pytest.mark.parametrize(
    "test_stage, test_score, mask_per_stage",
    [(1, "last", False), (2, "last", False), (2, "mean_on_final", False), (2, "mean", True)],
)
def test_test_stage_equals_a_shorter_cascade(test_stage, test_score, mask_per_stage):
    options = {"TEST_SCORE": test_score, "MASK_PER_STAGE": mask_per_stage}
    full = build(tiny_cfg(mask=mask_per_stage, TEST_STAGE=test_stage, **options))
    short = build(tiny_cfg(mask=mask_per_stage, stages=test_stage, **options))
    weights = {n: v for n, v in full.state_dict().items() if _stage_of(n) < test_stage}
    short.load_state_dict(weights, strict=True)
    batch = synthetic_batch()
    with torch.no_grad():
        expected, got = short.eval()(batch), full.eval()(batch)
    assert_same_detections(expected, got, masks=mask_per_stage)


# -------------------------------------------------------------------------- errors


def test_a_bad_option_in_a_hand_built_config_stops_build_model_with_its_name():
    """A CfgNode that did not come through load_config is checked by the constructor."""
    with pytest.raises(ValueError) as e:
        build_model(tiny_cfg(TEST_SCORE="max"))
    assert str(e.value) == (
        "CascadeRCNNROIHeads argument test_score = 'max': expected one of mean, mean_logits, "
        "mean_on_final, last."
    )


@pytest.fixture(scope="module")
def head_arguments():
    """The constructor arguments `CascadeRCNNROIHeads.from_config` gives for the tiny model."""
    cfg = tiny_cfg()
    return CascadeRCNNROIHeads.from_config(cfg, build_backbone(cfg).output_shape())


ARGUMENT = "CascadeRCNNROIHeads argument"
BOX_HEADS = f"{ARGUMENT} box_heads has 3: give one entry per stage."
LOSS_WEIGHTS = "expected one number >= 0 per stage, for 3 stages."


@pytest.mark.parametrize(
    "argument, value, message",
    [
        ("box_heads", [], f"{ARGUMENT} box_heads is empty: a cascade needs at least one stage."),
        (
            "box_predictors",
            [None, None],
            f"{ARGUMENT} box_predictors has 2 entries but {BOX_HEADS}",
        ),
        (
            "proposal_matchers",
            [None],
            f"{ARGUMENT} proposal_matchers has 1 entries but {BOX_HEADS}",
        ),
        (
            "stage_loss_weights",
            [1.0, 1.0],
            f"{ARGUMENT} stage_loss_weights = [1.0, 1.0]: {LOSS_WEIGHTS}",
        ),
        (
            "stage_loss_weights",
            [1.0, -1.0, 1.0],
            f"{ARGUMENT} stage_loss_weights = [1.0, -1.0, 1.0]: {LOSS_WEIGHTS}",
        ),
        (
            "test_score",
            "max",
            f"{ARGUMENT} test_score = 'max': expected one of mean, mean_logits, mean_on_final, "
            "last.",
        ),
        (
            "num_test_stages",
            0,
            f"{ARGUMENT} num_test_stages = 0: expected a stage in 1..3 (stages count from 1), "
            "or -1 or None for all.",
        ),
        (
            "test_prune_topk",
            -1,
            f"{ARGUMENT} test_prune_topk = -1: expected an integer >= 0 (0 turns pruning off).",
        ),
        (
            "test_prune_nms_thresh",
            0.0,
            f"{ARGUMENT} test_prune_nms_thresh = 0.0: expected an IoU in (0, 1] "
            "(1.0 turns it off).",
        ),
    ],
    ids=[
        "no-stage",
        "predictors-length",
        "matchers-length",
        "loss-weights-length",
        "negative-loss-weight",
        "test-score",
        "num-test-stages",
        "prune-topk",
        "prune-nms-thresh",
    ],
)
def test_constructor_names_its_argument(head_arguments, argument, value, message):
    """LazyConfig builds the heads from these arguments, without the config keys."""
    with pytest.raises(ValueError) as e:
        CascadeRCNNROIHeads(**{**head_arguments, argument: value})
    assert str(e.value) == message


def test_constructor_takes_the_arguments_from_config(head_arguments):
    """The control of the test above: unchanged, the same arguments build the heads."""
    heads = CascadeRCNNROIHeads(**head_arguments)
    assert len(heads.box_predictor) == 3 and heads.scorer is mean_of_stages
