"""
The models every benchmark setup compares, built from one config file each and given shared
weights:

- ours: `CascadeRCNNROIHeads` (this project);
- builtin: detectron2's `CascadeROIHeads`, with the same weights as ours;
- faster: Faster R-CNN's `StandardROIHeads`, with the same backbone and RPN;
- ours_tv: ours with PARALLEL_CPU_ROI_ALIGN False (torchvision's RoIAlign, as the others use).
"""

from pathlib import Path

import torch

from detectron2.config import get_cfg
from detectron2.modeling import build_model

from projects.cascade import add_cascade_config

REPO = Path(__file__).resolve().parents[1]
HEADS = {"ours": "CascadeRCNNROIHeads", "builtin": "CascadeROIHeads", "faster": "StandardROIHeads"}
TORCHVISION_ROI_ALIGN = {"MODEL.ROI_BOX_CASCADE_HEAD.PARALLEL_CPU_ROI_ALIGN": False}


def make_cfg(config_file, roi_heads, stages=None, **overrides):
    cfg = get_cfg()
    add_cascade_config(cfg)
    cfg.merge_from_file(str(REPO / config_file))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.ROI_HEADS.NAME = roi_heads
    if "MOBILENET" in cfg.MODEL:
        cfg.MODEL.MOBILENET.PRETRAINED = False  # weights come from a checkpoint or the seed
    if stages is not None:
        cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS = [0.5, 0.6, 0.7, 0.75, 0.8][:stages]
        cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS = [
            (10.0 * (k + 1), 10.0 * (k + 1), 5.0 * (k + 1), 5.0 * (k + 1)) for k in range(stages)
        ]
        cfg.MODEL.ROI_BOX_CASCADE_HEAD.STAGE_LOSS_WEIGHTS = [1.0] * stages
    for key, value in overrides.items():
        node = cfg
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return cfg


def build_trio(configs, cascade_weights=None, faster_weights=None, stages=None, **overrides):
    """
    The three models, and ours_tv. ours, ours_tv and builtin get the same weights (a
    checkpoint, or builtin's random ones); faster gets its checkpoint, or builtin's backbone
    and RPN.
    """
    cfgs = {n: make_cfg(configs[n], HEADS[n], stages=stages, **overrides) for n in HEADS}
    cfgs["ours_tv"] = make_cfg(
        configs["ours"], HEADS["ours"], stages=stages, **overrides, **TORCHVISION_ROI_ALIGN
    )
    models = {}
    for n in cfgs:
        torch.manual_seed(0)  # a fixed seed: the same random weights on every run
        models[n] = build_model(cfgs[n]).eval()
    if cascade_weights:
        state = _load(cascade_weights)
        models["builtin"].load_state_dict(state, strict=True)
    for n in ("ours", "ours_tv"):
        models[n].load_state_dict(models["builtin"].state_dict(), strict=True)
    if faster_weights:
        models["faster"].load_state_dict(_load(faster_weights), strict=True)
    else:
        shared = {
            k: v
            for k, v in models["builtin"].state_dict().items()
            if not k.startswith("roi_heads.")
        }
        models["faster"].load_state_dict(shared, strict=False)
    return cfgs, models


def trio(models):
    """Ours, the built-in and Faster R-CNN, without ours_tv (for the secondary rows)."""
    return {n: models[n] for n in HEADS}


def _load(path):
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return checkpoint.get("model", checkpoint)
