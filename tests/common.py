"""Tiny models and synthetic batches, so the suite runs on a CPU in minutes."""
import torch

from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from projects.cascade import add_cascade_config


def tiny_cfg(roi_heads="CascadeRCNNROIHeads", mask=False, stages=3, num_classes=3):
    """An R-18 FPN small enough for CPU tests, on detectron2's cascade recipe."""
    cfg = get_cfg()
    add_cascade_config(cfg)
    cfg.merge_from_file("configs/Base-Cascade-RCNN-FPN.yaml")
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.MASK_ON = mask
    cfg.MODEL.ROI_HEADS.NAME = roi_heads
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "GN"
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 32
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 32
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 64
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 64
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 16
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 2
    ious = [0.5, 0.6, 0.7, 0.75, 0.8][:stages]
    cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS = ious
    cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS = [
        (10.0 * (k + 1), 10.0 * (k + 1), 5.0 * (k + 1), 5.0 * (k + 1)) for k in range(stages)
    ]
    cfg.MODEL.ROI_BOX_CASCADE_HEAD.STAGE_LOSS_WEIGHTS = [1.0] * stages
    cfg.INPUT.MIN_SIZE_TEST = 0  # keep the synthetic images' own size
    return cfg


def build(cfg, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg)


def synthetic_batch(num_classes=3, with_masks=False, seed=0, sizes=((128, 160), (96, 128))):
    """Random images with a few random ground-truth boxes each (the second image has one box)."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for i, (h, w) in enumerate(sizes):
        image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8).float()
        n = 4 if i == 0 else 1
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = 16 + torch.rand(n, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3])
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
        inst.gt_classes = torch.randint(0, num_classes, (n,), generator=g)
        if with_masks:
            from detectron2.structures import BitMasks

            masks = torch.zeros(n, h, w, dtype=torch.bool)
            for j, (x0, y0, x1, y1) in enumerate(inst.gt_boxes.tensor.round().long().tolist()):
                masks[j, y0:y1, x0:x1] = True
            inst.gt_masks = BitMasks(masks)
        batch.append({"image": image, "height": h, "width": w, "instances": inst})
    return batch


def assert_same_detections(expected, got, masks=False):
    """Two models' outputs for the same batch hold bit-identical detections."""
    assert sum(len(r["instances"]) for r in expected) > 0, "the test needs some detections"
    for e, g in zip(expected, got):
        e, g = e["instances"], g["instances"]
        assert e.image_size == g.image_size
        assert torch.equal(e.pred_boxes.tensor, g.pred_boxes.tensor)
        assert torch.equal(e.scores, g.scores)
        assert torch.equal(e.pred_classes, g.pred_classes)
        if masks:
            assert torch.equal(e.pred_masks, g.pred_masks)
