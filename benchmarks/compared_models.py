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

from detectron2.modeling import build_model

from projects.cascade.config_loader import load_config
from projects.cascade.engine.checkpoint import read_checkpoint

REPO = Path(__file__).resolve().parents[1]
HEADS = {"ours": "CascadeRCNNROIHeads", "builtin": "CascadeROIHeads", "faster": "StandardROIHeads"}
TORCHVISION_ROI_ALIGN = {"MODEL.ROI_BOX_CASCADE_HEAD.PARALLEL_CPU_ROI_ALIGN": False}


def make_cfg(config_file, roi_heads, stages=None, **overrides):
    """
    `config_file` with `roi_heads`, on the CPU, with no MODEL.WEIGHTS (weights come from a
    checkpoint or the seed), `stages` stages (rising IoUs and weights, as the tests' tiny
    models) and config `overrides` (KEY=value, the key's dots as in YAML).
    """
    opts = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.ROI_HEADS.NAME", roi_heads]
    if stages is not None:
        reg_weights = [(10.0 * k, 10.0 * k, 5.0 * k, 5.0 * k) for k in range(1, stages + 1)]
        opts += [
            "MODEL.ROI_BOX_CASCADE_HEAD.IOUS", str([0.5, 0.6, 0.7, 0.75, 0.8][:stages]),
            "MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS", str(reg_weights),
            "MODEL.ROI_BOX_CASCADE_HEAD.STAGE_LOSS_WEIGHTS", str([1.0] * stages),
        ]  # fmt: skip
    for key, value in overrides.items():
        opts += [key, str(value)]
    return load_config(str(REPO / config_file), opts)


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


def variant_of(model, config_file, stages=None, **overrides):
    """Ours from `config_file` with config `overrides`, holding `model`'s weights."""
    cfg = make_cfg(config_file, HEADS["ours"], stages=stages, **overrides)
    variant = build_model(cfg).eval()
    variant.load_state_dict(model.state_dict(), strict=True)
    return variant


def trio(models):
    """Ours, the built-in and Faster R-CNN, without ours_tv (for the secondary rows)."""
    return {n: models[n] for n in HEADS}


def _load(path):
    checkpoint = read_checkpoint(str(path))
    return checkpoint.get("model", checkpoint)
