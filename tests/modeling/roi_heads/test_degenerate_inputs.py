"""
Degenerate inputs to CascadeRCNNROIHeads: images without ground truth or proposals, stages
whose boxes all leave the image, and images of extreme shape or with thousands of boxes.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils.events import EventStorage

from projects.cascade.data import CheckedDatasetMapper
from tests.helpers import build, proposals_like_rpn, synthetic_batch, tiny_cfg


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
    proposals = proposals_like_rpn(batch, seed=1)
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
    proposals = proposals_like_rpn(batch, seed=2)
    if train:
        losses = _run_heads(model, batch, proposals, train=True)
        # Stages 2 and 3 saw no boxes at all: their losses are zero, not NaN.
        assert losses["loss_cls_stage1"] == 0 and losses["loss_box_reg_stage2"] == 0
    else:
        out = _run_heads(model, batch, proposals, train=False)
        for inst in out:
            assert torch.isfinite(inst.pred_boxes.tensor).all()


# ------------------------------------------------------------------ extreme images


def _image_dict(tmp_path, width, height, boxes):
    path = tmp_path / f"{width}x{height}.png"
    pixels = np.random.RandomState(0).randint(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    annotations = [
        {"bbox": b, "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 0} for b in boxes
    ]
    return {
        "file_name": str(path),
        "image_id": 1,
        "width": width,
        "height": height,
        "annotations": annotations,
    }


def _train_step_and_inference(d):
    cfg = tiny_cfg(num_classes=1)
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (128,), 256
    model = build(cfg)
    with EventStorage():
        losses = model([CheckedDatasetMapper(cfg, is_train=True)(d)])
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total), losses
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        instances = model([CheckedDatasetMapper(cfg, is_train=False)(d)])[0]["instances"]
    assert instances.image_size == (d["height"], d["width"])
    boxes = instances.pred_boxes.tensor
    assert len(boxes) > 0 and torch.isfinite(boxes).all()
    assert (boxes[:, 2] <= d["width"]).all() and (boxes[:, 3] <= d["height"]).all()


@pytest.mark.parametrize("width, height", [(1600, 16), (16, 1600)], ids=["100:1", "1:100"])
def test_extreme_aspect_ratio_trains_and_predicts(tmp_path, width, height):
    # Resized to 128 px on its short side, capped at 256 px: a 256x3 image.
    box = [10, 2, 60, 10] if width > height else [2, 10, 10, 60]
    _train_step_and_inference(_image_dict(tmp_path, width, height, [box]))


def test_thousands_of_boxes_train_and_predict(tmp_path):
    corners = np.random.RandomState(1).uniform(0, 390, (3000, 2))
    boxes = [[float(x), float(y), 8.0, 8.0] for x, y in corners]
    _train_step_and_inference(_image_dict(tmp_path, 400, 400, boxes))
