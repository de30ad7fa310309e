"""The model: the cascade's ROI heads, their per-stage parts, and a CPU-sized backbone."""

from .backbone import build_mobilenetv2_fpn_backbone
from .roi_heads import CascadeRCNNROIHeads, MaskHeadPerStage
from .stage_outputs import CascadeStageOutputs

__all__ = [
    "CascadeRCNNROIHeads",
    "MaskHeadPerStage",
    "CascadeStageOutputs",
    "build_mobilenetv2_fpn_backbone",
]
