"""Every YAML in configs/ loads and builds the model it describes, with no network."""

import warnings

import pytest
import torch

from detectron2.modeling import build_model

from projects.cascade import CascadeRCNNROIHeads
from projects.cascade.config_loader import load_config
from tests.helpers import REPO, no_network

CONFIGS = sorted(p.relative_to(REPO) for p in (REPO / "configs").rglob("*.yaml"))


def load(path):
    cfg = load_config(str(REPO / path))
    cfg.defrost()
    return cfg


@pytest.mark.parametrize("path", CONFIGS, ids=str)
def test_config_builds(path, monkeypatch, tmp_path):
    cfg = load(path)
    cfg.MODEL.DEVICE = "meta"  # the modules, with shapes and no memory: quick at full size
    no_network(monkeypatch, tmp_path)
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


@pytest.mark.parametrize("demo", ["trees", "documents"])
def test_demo_configs_differ_only_in_roi_heads(demo):
    cascade = load(f"configs/{demo}/cascade_rcnn_{demo}.yaml")
    faster = load(f"configs/{demo}/faster_rcnn_{demo}.yaml")
    assert cascade.MODEL.ROI_HEADS.NAME == "CascadeRCNNROIHeads"
    assert faster.MODEL.ROI_HEADS.NAME == "StandardROIHeads"
    for cfg in (cascade, faster):
        cfg.MODEL.ROI_HEADS.NAME = cfg.OUTPUT_DIR = ""
    assert cascade == faster


def test_no_network_reaches_nothing(monkeypatch, tmp_path):
    """The control of test_config_builds: torchvision's own download fails there."""
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

    no_network(monkeypatch, tmp_path)
    with pytest.raises(Exception, match="network is out of reach|urlopen|Errno"):
        mobilenet_v2(weights=MobileNet_V2_Weights.IMAGENET1K_V1)
