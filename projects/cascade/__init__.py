"""
Cascade R-CNN for detectron2. Importing this package registers its ROI heads
(`CascadeRCNNROIHeads`), the MobileNetV2-FPN backbone and the tree-crown datasets.
"""

from .config import add_cascade_config
from .demo import register_demo
from .modeling import CascadeRCNNROIHeads

register_demo()  # the entry points will call it themselves

__all__ = ["add_cascade_config", "CascadeRCNNROIHeads"]
