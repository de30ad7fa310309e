"""
ViTDet-B Cascade Mask R-CNN on COCO, 100 epochs, with CascadeRCNNROIHeads: detectron2's
ViTDet recipe (projects/ViTDet, cascade_mask_rcnn_vitdet_b_100ep.py), built from detectron2's
own ViT and SimpleFeaturePyramid (common/models/mask_rcnn_vitdet.py). Each stage's box head
has 4 convs with LayerNorm and 1 FC, as in that recipe. detectron2's ViT needs timm.
"""

from functools import partial

from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.roi_heads import FastRCNNConvFCHead, FastRCNNOutputLayers
from detectron2.solver import WarmupParamScheduler

from projects.cascade import CascadeRCNNROIHeads

from .common.data.coco_lsj import dataloader

model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model
for _key in ("box_head", "box_predictor", "proposal_matcher"):  # Mask R-CNN's single stage
    model.roi_heads.pop(_key)
model.roi_heads.update(
    _target_=CascadeRCNNROIHeads,
    box_heads=[
        L(FastRCNNConvFCHead)(
            input_shape=ShapeSpec(channels=256, height=7, width=7),
            conv_dims=[256, 256, 256, 256],
            fc_dims=[1024],
            conv_norm="LN",
        )
        for _ in range(3)
    ],
    box_predictors=[
        L(FastRCNNOutputLayers)(
            input_shape=ShapeSpec(channels=1024),
            test_score_thresh=0.05,
            box2box_transform=L(Box2BoxTransform)(weights=(w1, w1, w2, w2)),
            cls_agnostic_bbox_reg=True,
            num_classes="${...num_classes}",
        )
        for w1, w2 in [(10, 5), (20, 10), (30, 15)]
    ],
    proposal_matchers=[
        L(Matcher)(thresholds=[iou], labels=[0, 1], allow_low_quality_matches=False)
        for iou in [0.5, 0.6, 0.7]
    ],
)

train = model_zoo.get_config("common/train.py").train
train.amp.enabled = True
train.ddp.fp16_compression = True
train.init_checkpoint = (
    "detectron2://ImageNetPretrained/MAE/mae_pretrain_vit_base.pth?matching_heuristics=True"
)
# 100 epochs: 184375 iterations x 64 images / 118000 images per epoch.
train.max_iter = 184375
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[163889, 177546], num_updates=train.max_iter
    ),
    warmup_length=250 / train.max_iter,
    warmup_factor=0.001,
)
# AdamW with layer-wise learning-rate decay over ViT-B's 12 blocks.
optimizer = model_zoo.get_config("common/optim.py").AdamW
optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=12, lr_decay_rate=0.7)
optimizer.params.overrides = {"pos_embed": {"weight_decay": 0.0}}
