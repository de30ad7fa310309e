"""
Cascade R-CNN R50-FPN with CascadeRCNNROIHeads, as configs/Base-Cascade-RCNN-FPN.yaml builds
it: detectron2's LazyConfig cascade (common/models/cascade_rcnn.py, a Cascade Mask R-CNN)
with this project's heads, the YAML recipe's backbone freezing and RPN, and no mask head.
"""

from detectron2 import model_zoo
from detectron2.config import LazyCall as L

from projects.cascade import CascadeRCNNROIHeads
from projects.cascade.layers import parallelize_pooler

model = model_zoo.get_config("common/models/cascade_rcnn.py").model

model.backbone.bottom_up.freeze_at = 2  # MODEL.BACKBONE.FREEZE_AT
model.proposal_generator.post_nms_topk = (2000, 1000)  # the cascade recipe's POST_NMS_TOPK_TRAIN
# Same arguments as detectron2's CascadeROIHeads; every option of ours has its default.
model.roi_heads._target_ = CascadeRCNNROIHeads
# MODEL.ROI_BOX_CASCADE_HEAD.PARALLEL_CPU_ROI_ALIGN: same results, all CPU threads.
model.roi_heads.box_pooler = L(parallelize_pooler)(pooler=model.roi_heads.box_pooler)
# Cascade R-CNN without masks (MODEL.MASK_ON False); cascade_mask_rcnn_* put them back.
[model.roi_heads.pop(k) for k in ("mask_in_features", "mask_pooler", "mask_head")]
