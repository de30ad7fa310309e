"""CascadeRCNNROIHeads: config checks, stage loss weights, gradient scaling, and degenerate inputs."""
import logging

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage

from projects.cascade import CascadeRCNNROIHeads
from tests.common import build, synthetic_batch, tiny_cfg

KEY = "MODEL.ROI_BOX_CASCADE_HEAD"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"BBOX_REG_WEIGHTS": [(10, 10, 5, 5), (20, 20, 10, 10)]}, f"{KEY}.BBOX_REG_WEIGHTS has 2"),
        ({"STAGE_LOSS_WEIGHTS": [1.0]}, f"{KEY}.STAGE_LOSS_WEIGHTS has 1"),
        ({"IOUS": [0.5, 1.2, 0.7]}, f"{KEY}.IOUS[1] = 1.2"),
        ({"IOUS": [0.0, 0.6, 0.7]}, f"{KEY}.IOUS[0] = 0.0"),
        ({"IOUS": [], "BBOX_REG_WEIGHTS": [], "STAGE_LOSS_WEIGHTS": []}, f"{KEY}.IOUS is empty"),
        (
            {"BBOX_REG_WEIGHTS": [(10, 10, 5), (20, 20, 10, 10), (30, 30, 15, 15)]},
            f"{KEY}.BBOX_REG_WEIGHTS[0] = (10, 10, 5)",
        ),
        ({"STAGE_LOSS_WEIGHTS": [1.0, -0.5, 0.25]}, f"{KEY}.STAGE_LOSS_WEIGHTS[1] = -0.5"),
    ],
)
def test_invalid_config_names_the_key(changes, message):
    cfg = tiny_cfg()
    for k, v in changes.items():
        setattr(cfg.MODEL.ROI_BOX_CASCADE_HEAD, k, v)
    with pytest.raises(ValueError) as e:
        build_model(cfg)
    assert message in str(e.value)


def test_non_increasing_ious_warn(caplog):
    cfg = tiny_cfg()
    cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS = [0.5, 0.7, 0.6]
    with caplog.at_level(logging.WARNING, logger="projects.cascade.config"):
        build_model(cfg)
    assert "does not increase" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="projects.cascade.config"):
        build_model(tiny_cfg())
    assert "does not increase" not in caplog.text


@pytest.mark.parametrize("stages", [1, 2, 5])
def test_any_number_of_stages(stages):
    model = build(tiny_cfg(stages=stages))
    heads = model.roi_heads
    assert isinstance(heads, CascadeRCNNROIHeads)
    assert len(heads.box_head) == len(heads.box_predictor) == stages
    assert [m.thresholds[1] for m in heads.proposal_matchers] == [0.5, 0.6, 0.7, 0.75, 0.8][:stages]
    assert heads.box_predictor[-1].box2box_transform.weights == (
        10.0 * stages, 10.0 * stages, 5.0 * stages, 5.0 * stages
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
    proposals = _proposals_like_rpn(batch, seed=3)
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


# ---------------------------------------------------------------- degenerate inputs


def _proposals_like_rpn(batch, seed, count=20):
    g = torch.Generator().manual_seed(seed)
    proposals = []
    for b in batch:
        h, w = b["height"], b["width"]
        xy = torch.rand(count, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = 8 + torch.rand(count, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3])
        p = Instances((h, w))
        p.proposal_boxes = Boxes(torch.cat([xy, xy + wh], 1))
        p.objectness_logits = torch.rand(count, generator=g)
        proposals.append(p)
    return proposals


def _run_heads(model, batch, proposals, train):
    model.train(train)
    images = model.preprocess_image(batch)
    with torch.set_grad_enabled(train), EventStorage():
        features = model.backbone(images.tensor)
        targets = [b["instances"] for b in batch]
        out, losses = model.roi_heads(images, features, proposals, targets if train else None)
    if train:
        total = sum(losses.values())
        assert torch.isfinite(total), losses
        total.backward()
        return losses
    return out


def _no_boxes(image_size):
    p = Instances(image_size)
    p.proposal_boxes = Boxes(torch.zeros(0, 4))
    p.objectness_logits = torch.zeros(0)
    return p


@pytest.mark.parametrize("mask", [False, True])
def test_image_without_ground_truth_trains(mask):
    model = build(tiny_cfg(mask=mask))
    batch = synthetic_batch(with_masks=mask)
    empty = batch[1]["instances"]
    batch[1]["instances"] = empty[torch.zeros(len(empty), dtype=torch.bool)]
    model.train()
    with EventStorage():
        losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    # All ground truth missing from every image: only background left, still no crash.
    for b in batch:
        b["instances"] = b["instances"][torch.zeros(len(b["instances"]), dtype=torch.bool)]
    with EventStorage():
        losses = model(batch)
    assert losses["loss_box_reg_stage2"] == 0
    sum(losses.values()).backward()


@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("train", [True, False])
def test_image_with_zero_proposals(mask, train):
    model = build(tiny_cfg(mask=mask))
    batch = synthetic_batch(with_masks=mask)
    proposals = _proposals_like_rpn(batch, seed=1)
    proposals[1] = _no_boxes(proposals[1].image_size)
    if train:
        # Without ground truth too, so not even the appended gt boxes remain.
        inst = batch[1]["instances"]
        batch[1]["instances"] = inst[torch.zeros(len(inst), dtype=torch.bool)]
        _run_heads(model, batch, proposals, train=True)
    else:
        out = _run_heads(model, batch, proposals, train=False)
        assert len(out[1]) == 0 and len(out[0]) > 0
        if mask:
            assert out[1].pred_masks.shape[0] == 0


@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("train", [True, False])
def test_refined_boxes_all_empty_after_stage_one(mask, train):
    """Stage 1 shifts every box far off the image, so clipping leaves them all empty."""
    model = build(tiny_cfg(mask=mask))
    with torch.no_grad():
        pred = model.roi_heads.box_predictor[0].bbox_pred
        pred.weight.zero_()
        pred.bias.copy_(torch.tensor([1000.0, 0.0, 0.0, 0.0]))  # dx = 100 box widths
    batch = synthetic_batch(with_masks=mask)
    proposals = _proposals_like_rpn(batch, seed=2)
    if train:
        losses = _run_heads(model, batch, proposals, train=True)
        # Stages 2 and 3 saw no boxes at all: their losses are zero, not NaN.
        assert losses["loss_cls_stage1"] == 0 and losses["loss_box_reg_stage2"] == 0
    else:
        out = _run_heads(model, batch, proposals, train=False)
        for inst in out:
            assert torch.isfinite(inst.pred_boxes.tensor).all()
