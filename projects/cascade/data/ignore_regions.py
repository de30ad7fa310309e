"""
Crowd regions (`iscrowd` annotations) as regions to ignore in training
(MODEL.ROI_BOX_CASCADE_HEAD.IGNORE_IOF_THRESH). detectron2 drops crowd annotations in its
dataset mapper, so that a box inside a crowd is trained as background; mmdetection
(`ignore_iof_thr`) and Detectron (`CROWD_FILTER_THRESH`) ignore it instead.
"""

from typing import List

import numpy as np
import torch

from detectron2.structures import Boxes, BoxMode

__all__ = ["IgnoreRegions", "crowd_regions"]


class IgnoreRegions:
    """
    The crowd boxes of one image, carried as the field `ignore_regions` of its ground-truth
    `Instances`: `GeneralizedRCNN` hands the ROI heads the Instances alone. An Instances field
    needs one entry per instance, so `len()` is the number of instances, and taking rows
    keeps every region, which belongs to the image, not to a row. The name has no "gt_"
    prefix, so detectron2 copies it into no proposal; the RPN does not read it.
    """

    def __init__(self, boxes: Boxes, num_instances: int):
        self.boxes = boxes
        self._num_instances = num_instances

    def __len__(self):
        return self._num_instances

    def __getitem__(self, rows) -> "IgnoreRegions":
        return IgnoreRegions(self.boxes, torch.arange(self._num_instances)[rows].numel())

    def to(self, *args, **kwargs) -> "IgnoreRegions":
        return IgnoreRegions(self.boxes.to(*args, **kwargs), self._num_instances)

    def __repr__(self):
        return f"IgnoreRegions({len(self.boxes)} boxes, for {self._num_instances} instances)"


def crowd_regions(annotations: List[dict], transforms, image_shape) -> Boxes:
    """The transformed, clipped boxes of the crowd annotations of one image."""
    crowd = [
        BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
        for a in annotations
        if a.get("iscrowd", 0)
    ]
    if crowd:
        crowd = transforms.apply_box(np.asarray(crowd, dtype=np.float64))
    boxes = Boxes(torch.as_tensor(np.asarray(crowd, dtype=np.float32).reshape(-1, 4)))
    boxes.clip(image_shape)
    return boxes
