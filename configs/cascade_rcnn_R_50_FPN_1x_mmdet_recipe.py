"""
The seed recipe: mmdetection's cascade-rcnn_r50_fpn_1x_coco, field by field, in detectron2
terms. Each setting names the mmdetection field it maps (models/cascade-rcnn_r50_fpn.py,
datasets/coco_detection.py, schedules/schedule_1x.py). Where detectron2 has no exact
counterpart, the comment says what differs.
"""

from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2.config import LazyCall as L
from detectron2.data import transforms as T
from detectron2.solver import WarmupParamScheduler

from .cascade_rcnn_R_50_FPN_1x import dataloader, model, optimizer, train

# data_preprocessor: mean/std in RGB (bgr_to_rgb=True); pad_size_divisor=32 is the FPN's
# size_divisibility already.
model.input_format = "RGB"
model.pixel_mean = [123.675, 116.28, 103.53]
model.pixel_std = [58.395, 57.12, 57.375]

# backbone: ResNet-50, style='pytorch' (stride in the 3x3 conv), frozen_stages=1 (stem and
# res2), init from torchvision's ImageNet weights, which detectron2 hosts converted.
# norm_cfg BN with norm_eval=True keeps BN's statistics fixed but trains its affine
# parameters; detectron2's FrozenBN fixes both, the closest it has.
model.backbone.bottom_up.stages.stride_in_1x1 = False
model.backbone.bottom_up.freeze_at = 2
train.init_checkpoint = "detectron2://ImageNetPretrained/torchvision/R-50.pkl"

# neck: FPN, 256 channels, num_outs=5 (P6 by max pooling, add_extra_convs=False): as is.

# rpn_head: anchors scales=[8] x strides 4..64 = sizes 32..512, ratios 0.5/1/2: as is.
# train_cfg.rpn.assigner: pos 0.7, neg 0.3, match_low_quality=True: as is (detectron2 has no
# min_pos_iou=0.3 floor on its low-quality matches). sampler 256 at 0.5: as is.
# allowed_border=0: anchors that cross the image border are ignored.
model.proposal_generator.anchor_boundary_thresh = 0.0
# rpn_proposal nms_pre=2000, max_per_img=2000; test_cfg.rpn nms_pre=1000, max_per_img=1000;
# nms 0.7; min_bbox_size=0.
model.proposal_generator.pre_nms_topk = (2000, 1000)
model.proposal_generator.post_nms_topk = (2000, 1000)
# loss_bbox SmoothL1Loss(beta=1/9); loss_cls sigmoid cross-entropy: as is.
model.proposal_generator.smooth_l1_beta = 1.0 / 9.0

# roi_head: CascadeRoIHead, num_stages=3, stage_loss_weights=[1, 0.5, 0.25], and no
# 1/num_stages scaling of the features' gradient. (Names with "_" are not config entries.)
_heads = model.roi_heads
_heads.stage_loss_weights = [1.0, 0.5, 0.25]
_heads.scale_feature_gradient = False
# bbox_roi_extractor: RoIAlign 7x7, sampling_ratio=0 (adaptive), aligned (mmcv's default),
# levels by finest_scale=56: ROIAlignV2 with sampling_ratio 0 and detectron2's level mapping
# (canonical 224 at P4) assign the same levels.
# train_cfg.rcnn sampler: RandomSampler num=512, pos_fraction=0.25, add_gt_as_proposals=True
# at every stage.
_heads.batch_size_per_image = 512
_heads.positive_fraction = 0.25
_heads.proposal_append_gt = True
_heads.resample = True
# train_cfg.rcnn assigner: pos=neg=min_pos_iou 0.5 / 0.6 / 0.7, match_low_quality=False:
# the proposal_matchers as they are. ignore_iof_thr=-1 in every assigner (the RPN's too):
# crowd regions are not ignored, so ignore_iof_thresh stays off (-1) as its default has it.
# bbox_head: Shared2FCBBoxHead, fc_out_channels=1024: the box_heads as they are.
# bbox_coder target_stds (0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067,
# 0.067): weights are their inverses (the third is not detectron2's 30, 15).
# reg_class_agnostic=True: as is. loss_bbox SmoothL1Loss(beta=1.0); loss_cls softmax
# cross-entropy: as is.
for _predictor, _stds in zip(
    _heads.box_predictors,
    [(0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067)],
):
    _predictor.box2box_transform.weights = tuple(1.0 / s for s in _stds)
    _predictor.smooth_l1_beta = 1.0
    # test_cfg.rcnn: score_thr=0.05, nms iou 0.5, max_per_img=100.
    _predictor.test_score_thresh = 0.05
    _predictor.test_nms_thresh = 0.5
    _predictor.test_topk_per_image = 100
# CascadeRoIHead.predict: the stages' class logits of their own boxes are averaged, then
# softmaxed once; boxes from the last stage.
_heads.test_score = "mean_logits"

# datasets/coco_detection.py: Resize scale=(1333, 800) keep_ratio, RandomFlip prob=0.5;
# test Resize (1333, 800); filter_empty_gt=True.
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.train.mapper.image_format = "RGB"
dataloader.train.total_batch_size = 16  # 8 GPUs x 2 images

# schedules/schedule_1x.py: SGD lr 0.02, momentum 0.9, weight_decay 1e-4 on every parameter
# (no paramwise_cfg, so norm layers decay too); 12 epochs, lr x0.1 at epochs 8 and 11;
# LinearLR warmup over 500 iterations from 0.001.
optimizer.lr = 0.02
optimizer.momentum = 0.9
optimizer.weight_decay = 1e-4
optimizer.params.weight_decay_norm = 1e-4
_iterations_per_epoch = 118287 / 16  # COCO train2017 images / batch
train.max_iter = round(12 * _iterations_per_epoch)
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01],
        milestones=[round(8 * _iterations_per_epoch), round(11 * _iterations_per_epoch)],
        num_updates=train.max_iter,
    ),
    warmup_length=500 / train.max_iter,
    warmup_method="linear",
    warmup_factor=0.001,
)
