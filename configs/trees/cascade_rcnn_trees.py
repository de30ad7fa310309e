"""
The tree-crown demo as a LazyConfig: the model, data and schedule of cascade_rcnn_trees.yaml.

    python train_net.py --config-file configs/trees/cascade_rcnn_trees.py
"""

from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
from detectron2.solver import WarmupParamScheduler

from projects.cascade.modeling.backbone import IMAGENET_WEIGHTS, MobileNetV2

from ..common.data.trees import dataloader
from ..common.models.cascade_rcnn_fpn import model

# An ImageNet MobileNetV2-FPN, 64 channels: small enough to train on 2 CPU cores.
model.backbone = L(FPN)(
    bottom_up=L(MobileNetV2)(freeze_at=2, out_features=["mb2", "mb3", "mb4", "mb5"]),
    in_features=["mb2", "mb3", "mb4", "mb5"],
    out_channels=64,
    top_block=L(LastLevelMaxPool)(),
)
model.pixel_mean = [123.675, 116.28, 103.53]  # torchvision's ImageNet normalization, RGB
model.pixel_std = [58.395, 57.12, 57.375]
model.input_format = "RGB"

# Crowns are 10-100 px across in 400 px tiles.
_rpn = model.proposal_generator
_rpn.head.in_channels = 64
_rpn.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
_rpn.pre_nms_topk = (1000, 1000)
_rpn.post_nms_topk = (500, 500)

_heads = model.roi_heads
_heads.num_classes = 1
_heads.batch_size_per_image = 128
_heads.box_pooler.pooler.sampling_ratio = (
    2  # a fixed 2x2 grid: RoIAlign's backward is slow on a CPU
)
for _head in _heads.box_heads:
    _head.input_shape = ShapeSpec(channels=64, height=7, width=7)
    _head.fc_dims = [256, 256]
for _predictor in _heads.box_predictors:
    _predictor.input_shape = ShapeSpec(channels=256)
    _predictor.test_topk_per_image = 150

optimizer = model_zoo.get_config("common/optim.py").SGD
train = model_zoo.get_config("common/train.py").train
train.update(
    output_dir="./output/trees/cascade_rcnn_lazy",
    device="cpu",
    seed=1,
    max_iter=400,
    eval_period=0,  # at the end of training
    checkpointer=dict(period=200, max_to_keep=100),
    init_checkpoint=IMAGENET_WEIGHTS,  # converted by scripts/setup.sh
)
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[280, 360], num_updates=400
    ),
    warmup_length=100 / 400,
    warmup_factor=0.001,
)
