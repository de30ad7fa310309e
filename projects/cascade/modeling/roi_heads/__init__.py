from .cascade_roi_heads import CascadeRCNNROIHeads
from .mask_per_stage import MaskHeadPerStage

__all__ = ["CascadeRCNNROIHeads", "MaskHeadPerStage"]
