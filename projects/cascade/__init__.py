"""
Cascade R-CNN for detectron2. Importing this package registers its ROI heads
(`CascadeRCNNROIHeads`), the MobileNetV2-FPN backbone and the tree-crown datasets.
"""
from .config import add_cascade_config
from .modeling import CascadeRCNNROIHeads
from .data import datasets  # noqa: F401  (registers trees_train, trees_val, trees_test)

__all__ = ["add_cascade_config", "CascadeRCNNROIHeads"]
