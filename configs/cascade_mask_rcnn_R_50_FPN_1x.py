"""Cascade Mask R-CNN R50-FPN 1x on COCO: the LazyConfig of cascade_mask_rcnn_R_50_FPN_1x.yaml."""

from detectron2 import model_zoo
from detectron2.config import LazyCall as L

from projects.cascade.layers import parallelize_pooler

from .cascade_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

_mask = model_zoo.get_config("common/models/cascade_rcnn.py").model.roi_heads
model.roi_heads.update(
    mask_in_features=_mask.mask_in_features,
    mask_pooler=L(parallelize_pooler)(pooler=_mask.mask_pooler),
    mask_head=_mask.mask_head,
)
dataloader.train.mapper.use_instance_mask = True
