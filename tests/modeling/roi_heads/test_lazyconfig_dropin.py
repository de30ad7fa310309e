"""
CascadeRCNNROIHeads as a LazyConfig drop-in: in a LazyConfig that builds detectron2's
CascadeROIHeads, `_target_=CascadeRCNNROIHeads` with the same arguments builds the same
model, with the same parameter names and, for the same weights, the same outputs, losses
and gradients. Checked on detectron2's own configs/common/models/cascade_rcnn.py, and with
ViTDet's box heads (4 convs with LayerNorm, 1 FC) and the LVIS predictor options.
"""

import copy

import pytest
import torch

from detectron2 import model_zoo
from detectron2.config import LazyConfig, instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import CascadeROIHeads
from detectron2.utils.events import EventStorage

from projects.cascade import CascadeRCNNROIHeads
from projects.cascade.errors import ConfigError
from tests.helpers import REPO, assert_same_detections, synthetic_batch

NUM_CLASSES = 3


def tiny_lazy_cascade():
    """detectron2's LazyConfig Cascade Mask R-CNN (FPN), shrunk to a ResNet-18 of 32 channels."""
    model = model_zoo.get_config("common/models/cascade_rcnn.py").model
    bottom_up = model.backbone.bottom_up
    bottom_up.stem.norm = bottom_up.stages.norm = "GN"
    bottom_up.stages.depth = 18
    del bottom_up.stages.stride_in_1x1  # not an argument of ResNet-18's blocks
    model.backbone.out_channels = 32
    model.proposal_generator.head.in_channels = 32
    model.proposal_generator.post_nms_topk = (64, 64)
    heads = model.roi_heads
    heads.num_classes = NUM_CLASSES
    heads.batch_size_per_image = 32
    for head in heads.box_heads:
        head.input_shape = ShapeSpec(channels=32, height=7, width=7)
        head.fc_dims = [64, 64]
    for predictor in heads.box_predictors:
        predictor.input_shape = ShapeSpec(channels=64)
    heads.mask_head.input_shape = ShapeSpec(channels=32, height=14, width=14)
    heads.mask_head.conv_dims = [16, 16]
    return model


def vitdet_box_heads(model, lvis=False):
    """
    The box heads of configs/cascade_mask_rcnn_vitdet_b_100ep.py (ViTDet's: 4 convs with
    LayerNorm, 1 FC), narrowed; with `lvis`, ViTDet's LVIS predictor options.
    """
    vitdet = LazyConfig.load(str(REPO / "configs/cascade_mask_rcnn_vitdet_b_100ep.py"))
    model.roi_heads.box_heads = vitdet.model.roi_heads.box_heads
    for head in model.roi_heads.box_heads:
        head.update(
            input_shape=ShapeSpec(channels=32, height=7, width=7), conv_dims=[16] * 4, fc_dims=[64]
        )
        assert head.conv_norm == "LN"
    if lvis:
        for predictor in model.roi_heads.box_predictors:
            predictor.update(
                test_score_thresh=0.02,
                test_topk_per_image=300,
                use_sigmoid_ce=True,
                use_fed_loss=True,
                fed_loss_num_classes=2,
                get_fed_loss_cls_weights=lambda: torch.ones(NUM_CLASSES),
            )
    return model


def built_pair(model_cfg):
    """detectron2's cascade and ours from the same LazyConfig; ours takes the built-in's weights."""
    assert model_cfg.roi_heads._target_ is CascadeROIHeads
    torch.manual_seed(0)
    builtin = instantiate(model_cfg)
    ours_cfg = copy.deepcopy(model_cfg)
    ours_cfg.roi_heads._target_ = CascadeRCNNROIHeads
    ours = instantiate(ours_cfg)
    assert type(ours.roi_heads) is CascadeRCNNROIHeads
    ours.load_state_dict(builtin.state_dict(), strict=True)  # the same parameter names
    return builtin, ours


def assert_same_training_step(builtin, ours, batch):
    grads, losses = [], []
    for model in (builtin, ours):
        model.train()
        model.zero_grad()
        torch.manual_seed(1)  # RPN and ROI sampling, and the federated loss's classes
        with EventStorage():
            loss = model(batch)
        sum(loss.values()).backward()
        losses.append(loss)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert losses[0].keys() == losses[1].keys()
    for name in losses[0]:
        assert torch.equal(losses[0][name], losses[1][name]), name
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name in grads[0]:
        assert torch.equal(grads[0][name], grads[1][name]), name


@pytest.mark.parametrize(
    "make",
    [
        tiny_lazy_cascade,
        lambda: vitdet_box_heads(tiny_lazy_cascade()),
        lambda: vitdet_box_heads(tiny_lazy_cascade(), lvis=True),
    ],
    ids=["detectron2-common-cascade", "vitdet-box-heads", "vitdet-lvis-predictors"],
)
def test_same_model_outputs_losses_and_gradients(make):
    builtin, ours = built_pair(make())
    batch = synthetic_batch(num_classes=NUM_CLASSES, with_masks=True)
    assert_same_training_step(builtin, ours, batch)
    for model in (builtin, ours):
        for head in model.roi_heads.box_predictor:
            head.test_score_thresh = 0.0  # random heads score low: keep every detection
    with torch.no_grad():
        expected = builtin.eval()(batch)
        got = ours.eval()(batch)
    assert_same_detections(expected, got, masks=True)


def test_wrong_argument_is_named():
    model = tiny_lazy_cascade()
    model.roi_heads._target_ = CascadeRCNNROIHeads
    model.roi_heads.proposal_matchers = model.roi_heads.proposal_matchers[:2]
    with pytest.raises(
        ConfigError, match="CascadeRCNNROIHeads argument proposal_matchers has 2 entries"
    ):
        instantiate(model)
