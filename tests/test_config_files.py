"""Every YAML in configs/ builds the model it describes."""

import warnings

import pytest
import torch

from detectron2.config import get_cfg
from detectron2.modeling import build_model

from projects.cascade import CascadeRCNNROIHeads, add_cascade_config
from tests.helpers import REPO

CONFIGS = sorted(p.relative_to(REPO) for p in (REPO / "configs").rglob("*.yaml"))


def load(path):
    cfg = get_cfg()
    add_cascade_config(cfg)
    cfg.merge_from_file(str(REPO / path))
    return cfg


@pytest.mark.parametrize("path", CONFIGS, ids=str)
def test_config_builds(path):
    cfg = load(path)
    cfg.MODEL.DEVICE = "meta"  # the modules, with shapes and no memory: quick at full size
    if "trees" not in str(path):
        cfg.MODEL.WEIGHTS = ""  # R-50 ImageNet weights need the internet
    with torch.device("meta"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter")
        model = build_model(cfg)
    heads = model.roi_heads
    if cfg.MODEL.ROI_HEADS.NAME == "CascadeRCNNROIHeads":
        assert isinstance(heads, CascadeRCNNROIHeads)
        assert len(heads.box_predictor) == len(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS) == 3
    assert heads.mask_on == cfg.MODEL.MASK_ON


def test_model_zoo_recipe():
    for name in ("cascade_rcnn_R_50_FPN_1x", "cascade_mask_rcnn_R_50_FPN_3x"):
        cfg = load(f"configs/{name}.yaml")
        assert cfg.MODEL.WEIGHTS == "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
        assert cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN == 2000
        assert cfg.MODEL.RESNETS.DEPTH == 50
    assert load("configs/cascade_rcnn_R_50_FPN_3x.yaml").SOLVER.MAX_ITER == 270000
    assert load("configs/cascade_mask_rcnn_R_50_FPN_1x.yaml").MODEL.MASK_ON


def test_demo_configs_differ_only_in_roi_heads():
    cascade = load("configs/trees/cascade_rcnn_trees.yaml")
    faster = load("configs/trees/faster_rcnn_trees.yaml")
    assert cascade.MODEL.ROI_HEADS.NAME == "CascadeRCNNROIHeads"
    assert faster.MODEL.ROI_HEADS.NAME == "StandardROIHeads"
    for cfg in (cascade, faster):
        cfg.MODEL.ROI_HEADS.NAME = cfg.OUTPUT_DIR = ""
    assert cascade == faster
