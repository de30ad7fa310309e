"""Layers: RoIAlign on every CPU thread, with torchvision's results bit for bit."""

from .roi_align import ParallelROIAlign, parallelize_pooler

__all__ = ["ParallelROIAlign", "parallelize_pooler"]
