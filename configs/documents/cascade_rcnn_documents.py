"""
The documents benchmark's cascade as a LazyConfig: the model, data and schedule of
cascade_rcnn_documents.yaml, on the tree demo's LazyConfig backbone.

    python train_net.py --config-file configs/documents/cascade_rcnn_documents.py
"""

from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler

from ..common.data.documents import dataloader
from ..trees.cascade_rcnn_trees import model, optimizer, train

# Text lines 7-16 px high and up to 650 px wide: the anchors of the YAML (two sizes per
# octave, six height/width ratios).
_rpn = model.proposal_generator
_rpn.anchor_generator.sizes = [[8, 11.3], [16, 22.6], [32, 45.3], [64, 90.5], [128, 181]]
_rpn.anchor_generator.aspect_ratios = [0.025, 0.05, 0.1, 0.2, 0.5, 1.0]
_rpn.head.num_anchors = 12

model.roi_heads.num_classes = 3  # body, heading, code
for _predictor in model.roi_heads.box_predictors:
    _predictor.test_topk_per_image = 100  # COCO's evaluation counts 100 per image

train.update(
    output_dir="./output/documents/cascade_rcnn_lazy",
    max_iter=1200,
    checkpointer=dict(period=400, max_to_keep=100),
)
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[840, 1080], num_updates=1200
    ),
    warmup_length=100 / 1200,
    warmup_factor=0.001,
)
