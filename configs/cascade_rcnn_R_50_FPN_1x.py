"""Cascade R-CNN R50-FPN 1x on COCO: the LazyConfig of cascade_rcnn_R_50_FPN_1x.yaml."""

from detectron2 import model_zoo

from .common.data.coco import dataloader
from .common.models.cascade_rcnn_fpn import model

optimizer = model_zoo.get_config("common/optim.py").SGD
lr_multiplier = model_zoo.get_config("common/coco_schedule.py").lr_multiplier_1x
train = model_zoo.get_config("common/train.py").train
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
