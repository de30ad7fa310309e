"""
Cascade R-CNN for detectron2. Importing this package registers its ROI heads
(`CascadeRCNNROIHeads`), the MobileNetV2-FPN backbone and the tree-crown datasets.
"""

from .config import add_cascade_config
from .data import datasets  # noqa: F401  (registers trees_train, trees_val, trees_test)
from .modeling import CascadeRCNNROIHeads

__all__ = ["add_cascade_config", "CascadeRCNNROIHeads"]
