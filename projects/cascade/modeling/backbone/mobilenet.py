"""
torchvision's MobileNetV2 as a detectron2 FPN backbone, for models that must train on a CPU.

Building it reads no weights: its ImageNet weights come, as every detectron2 backbone's do,
through MODEL.WEIGHTS (`train.init_checkpoint` in a LazyConfig), from the checkpoint that
`convert_torchvision_weights` makes of torchvision's file (scripts/setup.sh does it once).
"""

from typing import Dict, Sequence

import torch
from torchvision.models import mobilenet_v2

from detectron2.config import CfgNode
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

__all__ = [
    "IMAGENET_WEIGHTS",
    "MobileNetV2",
    "add_mobilenet_config",
    "build_mobilenetv2_fpn_backbone",
    "convert_torchvision_weights",
]

# The ImageNet weights as a detectron2 checkpoint, in the project's cache (utils/file_io.py).
IMAGENET_WEIGHTS = "cascade://ImageNetPretrained/mobilenet_v2.pth"

# Slices [start, end) of torchvision's `features` that end at strides 4, 8, 16 and 32.
_STAGES = {"mb2": (0, 4, 4), "mb3": (4, 7, 8), "mb4": (7, 14, 16), "mb5": (14, 18, 32)}


def add_mobilenet_config(cfg: CfgNode) -> None:
    """Add the MODEL.MOBILENET keys of `build_mobilenetv2_fpn_backbone`."""
    cfg.MODEL.MOBILENET = CfgNode()
    # Freeze the first N of its four stages (strides 4, 8, 16, 32). 0 trains all.
    cfg.MODEL.MOBILENET.FREEZE_AT = 1
    # The stages whose outputs the FPN takes.
    cfg.MODEL.MOBILENET.OUT_FEATURES = ["mb2", "mb3", "mb4", "mb5"]


class MobileNetV2(Backbone):
    """
    The inverted-residual trunk, cut into four stages. BatchNorm is frozen: batches of
    a few images cannot estimate its statistics. Inputs must be normalized as for
    torchvision's ImageNet models (RGB, mean/std in MODEL.PIXEL_MEAN/STD).
    """

    def __init__(self, freeze_at: int, out_features: Sequence[str]):
        super().__init__()
        features = mobilenet_v2(weights=None).features
        self.stage_names = list(_STAGES)
        for name, (start, end, _) in _STAGES.items():
            self.add_module(name, features[start:end])  # keeps torchvision's indices
        for name in self.stage_names[:freeze_at]:
            for p in getattr(self, name).parameters():
                p.requires_grad_(False)
        FrozenBatchNorm2d.convert_frozen_batchnorm(self)
        unknown = set(out_features) - set(self.stage_names)
        if unknown:
            raise ValueError(
                f"MODEL.MOBILENET.OUT_FEATURES has unknown names {sorted(unknown)}; "
                f"choose from {self.stage_names}."
            )
        self._out_features = list(out_features)
        self._out_feature_strides = {n: s for n, (_, _, s) in _STAGES.items()}
        self._out_feature_channels = {
            n: getattr(self, n)[-1].out_channels for n in self.stage_names
        }

    def forward(self, x):
        outputs = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs


@BACKBONE_REGISTRY.register()
def build_mobilenetv2_fpn_backbone(cfg, input_shape: ShapeSpec):
    bottom_up = MobileNetV2(
        freeze_at=cfg.MODEL.MOBILENET.FREEZE_AT,
        out_features=cfg.MODEL.MOBILENET.OUT_FEATURES,
    )
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


def convert_torchvision_weights(
    state_dict: Dict[str, torch.Tensor], prefix: str = "backbone.bottom_up."
) -> Dict[str, torch.Tensor]:
    """
    torchvision's MobileNetV2 state dict under the names of `MobileNetV2` inside a detectron2
    model (`prefix`): `features.{i}.*` becomes `{stage}.{i}.*`. The classifier and the
    last 1x1 convolution, which no stage uses, are left out; every other tensor is kept as
    it is, BatchNorm's `num_batches_tracked` too (FrozenBatchNorm2d keeps it, and it is part
    of the weights' fingerprint).
    """
    stage_of = {i: name for name, (start, end, _) in _STAGES.items() for i in range(start, end)}
    converted = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] != "features":
            continue
        index = int(parts[1])
        if index in stage_of:
            converted[prefix + ".".join([stage_of[index], *parts[1:]])] = value
    return converted
