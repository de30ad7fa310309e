"""COCO with large-scale jitter at 1024 px, the data recipe of detectron2's ViTDet configs."""

from detectron2.config import LazyCall as L
from detectron2.data import transforms as T

from .coco import dataloader

dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),
    L(T.ResizeScale)(min_scale=0.1, max_scale=2.0, target_height=1024, target_width=1024),
    L(T.FixedSizeCrop)(crop_size=(1024, 1024), pad=False),
]
dataloader.train.mapper.image_format = "RGB"
dataloader.train.mapper.use_instance_mask = True
dataloader.train.mapper.recompute_boxes = True  # the crop cuts boxes; take them from the masks
dataloader.train.total_batch_size = 64
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=1024, max_size=1024)
]
