"""Data: checked COCO datasets, the tree-crown demo sets, and a resumable training stream."""

from .coco_checks import check_coco_json, load_checked_coco_json, register_coco_instances
from .dataset_mapper import CheckedDatasetMapper
from .resumable_loader import build_resumable_train_loader

__all__ = [
    "check_coco_json",
    "load_checked_coco_json",
    "register_coco_instances",
    "CheckedDatasetMapper",
    "build_resumable_train_loader",
]
