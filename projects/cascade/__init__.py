"""
Cascade R-CNN for detectron2. Importing this package registers its ROI heads,
`CascadeRCNNROIHeads`, and what building its models needs (the MobileNetV2-FPN backbone).
The CPU demos' datasets and backbone keys register through `projects.cascade.demo`.
"""

from . import utils  # noqa: F401  (the cascade:// paths of MODEL.WEIGHTS)
from .config import add_cascade_config
from .modeling import CascadeRCNNROIHeads

__all__ = ["add_cascade_config", "CascadeRCNNROIHeads"]
