"""Cascade R-CNN for detectron2. Importing this package registers its ROI heads, backbone and datasets."""
from .config import add_cascade_config
from .cascade_roi_heads import CascadeRCNNROIHeads
from . import mobilenet, trees  # noqa: F401  (registration)

__all__ = ["add_cascade_config", "CascadeRCNNROIHeads"]
