"""Config keys of the cascade, and the checks that turn a bad value into an error naming the key."""
import logging
from numbers import Real

from detectron2.config import CfgNode as CN

logger = logging.getLogger(__name__)

_CASCADE = "MODEL.ROI_BOX_CASCADE_HEAD"
TEST_SCORES = ("mean", "mean_on_final", "last")


def add_cascade_config(cfg):
    """
    Add the keys of this project to `cfg`. No existing default changes, so that a
    config valid for detectron2's built-in cascade gives the same model here.
    """
    _C = cfg
    # IOUS and BBOX_REG_WEIGHTS already exist in detectron2's node.
    # Multiplies every loss of stage k (box classification and regression).
    # detectron2's cascade sums the stages' losses: (1, 1, 1). mmdetection and the
    # paper's code use (1, 0.5, 0.25).
    _C.MODEL.ROI_BOX_CASCADE_HEAD.STAGE_LOSS_WEIGHTS = (1.0, 1.0, 1.0)
    # detectron2 scales the gradient flowing into the pooled box features by
    # 1/num_stages, so the backbone sees one stage's worth of gradient while every
    # head gets its full loss. False lets the full sum through (mmdetection).
    _C.MODEL.ROI_BOX_CASCADE_HEAD.SCALE_FEATURE_GRADIENT = True
    # The stages disagree on the boxes they score: "mean" averages each stage's scores of
    # its own input boxes (detectron2, mmdetection), "mean_on_final" has every stage's
    # classifier score the final boxes (the paper's ensemble), "last" measures the last
    # stage without the ensemble.
    _C.MODEL.ROI_BOX_CASCADE_HEAD.TEST_SCORE = "mean"
    # Stop inference after stage k (counting from 1), to measure what each stage adds
    # without training a shorter cascade. -1 runs every stage.
    _C.MODEL.ROI_BOX_CASCADE_HEAD.TEST_STAGE = -1
    # False keeps every box that stage 1 sampled and later stages refined (detectron2, the
    # paper), so later stages see ever more positives. True re-samples each stage at
    # ROI_HEADS.BATCH_SIZE_PER_IMAGE and POSITIVE_FRACTION, with exact ground-truth boxes in
    # place of the regressed ones (mmdetection).
    _C.MODEL.ROI_BOX_CASCADE_HEAD.RESAMPLE = False
    # A single mask head learns from stage 1's positives, matched at the lowest IoU
    # (detectron2). True trains one head per stage on that stage's positives and averages
    # their masks at test time (mmdetection), for N times the mask head's cost. Only with
    # MODEL.MASK_ON.
    _C.MODEL.ROI_BOX_CASCADE_HEAD.MASK_PER_STAGE = False
    # Test-time speed: stages 2..N cost as much as stage 1 on every proposal, yet most
    # proposals are background that stage 1 already scores low. k > 0 sends only the top-k
    # boxes of each image by stage-1 foreground score on to stages 2..N; the other boxes
    # are dropped from the detections (they have no score from the later stages to average).
    # 0 turns it off, and k >= the number of proposals changes nothing. Test time only.
    _C.MODEL.ROI_BOX_CASCADE_HEAD.TEST_PRUNE_TOPK = 0
    # Many proposals are near-copies of each other, and after stage 1 they converge on the
    # same objects: stages 2..N would refine the same box several times. A threshold < 1
    # runs NMS at that IoU on stage 1's refined boxes (per top class, by stage-1 foreground
    # score) and sends only the survivors on, before TEST_PRUNE_TOPK; the suppressed boxes
    # are dropped from the detections. 1.0 turns it off. Test time only.
    _C.MODEL.ROI_BOX_CASCADE_HEAD.TEST_PRUNE_NMS_THRESH = 1.0
    # torchvision's CPU RoIAlign runs on one thread, and RoIAlign is most of the stages'
    # time on a CPU. True pools CPU float tensors with parallel_roi_align.py's kernel over
    # all of torch's threads, which gives the same bits (outputs and gradients); it is
    # built on first use. False keeps torchvision's kernel. No effect on GPUs or exports.
    _C.MODEL.ROI_BOX_CASCADE_HEAD.PARALLEL_CPU_ROI_ALIGN = True

    # Evaluate every stage alone and every ensemble of stages 1~k from the same inference
    # pass as the main COCO evaluation (see stage_evaluation.py), to see what each stage
    # adds at every IoU, as the paper's Table 4 does. Off by default: it costs one
    # NMS and one COCOeval per stage and ensemble.
    _C.TEST.CASCADE_STAGE_EVAL = False

    # The ImageNet MobileNetV2 backbone of the tree-crown demo (see mobilenet.py).
    _C.MODEL.MOBILENET = CN()
    # Load torchvision's ImageNet weights (mobilenet_v2-b0353104.pth) through
    # torchvision's own loader, which reads torch hub's cache first.
    _C.MODEL.MOBILENET.PRETRAINED = True
    # Freeze the first N of its four stages (strides 4, 8, 16, 32). 0 trains all.
    _C.MODEL.MOBILENET.FREEZE_AT = 1
    _C.MODEL.MOBILENET.OUT_FEATURES = ["mb2", "mb3", "mb4", "mb5"]


def cascade_stage_settings(cfg):
    """
    Return (ious, bbox_reg_weights, stage_loss_weights), one entry per stage,
    after checking them. Raises ValueError naming the key at fault.
    """
    node = cfg.MODEL.ROI_BOX_CASCADE_HEAD
    ious = list(node.IOUS)
    reg_weights = [tuple(w) if isinstance(w, (list, tuple)) else w for w in node.BBOX_REG_WEIGHTS]
    loss_weights = list(node.STAGE_LOSS_WEIGHTS)

    if len(ious) == 0:
        raise ValueError(f"{_CASCADE}.IOUS is empty: a cascade needs at least one stage.")
    for key, values in (("BBOX_REG_WEIGHTS", reg_weights), ("STAGE_LOSS_WEIGHTS", loss_weights)):
        if len(values) != len(ious):
            raise ValueError(
                f"{_CASCADE}.{key} has {len(values)} entries but {_CASCADE}.IOUS has "
                f"{len(ious)}: give one entry per stage."
            )
    for k, iou in enumerate(ious):
        if not isinstance(iou, Real) or not 0.0 < iou < 1.0:
            raise ValueError(f"{_CASCADE}.IOUS[{k}] = {iou!r}: an IoU threshold must lie in (0, 1).")
    for k, w in enumerate(reg_weights):
        if not (isinstance(w, tuple) and len(w) == 4 and all(isinstance(x, Real) for x in w)):
            raise ValueError(
                f"{_CASCADE}.BBOX_REG_WEIGHTS[{k}] = {w!r}: expected 4 numbers (wx, wy, ww, wh)."
            )
        if any(x <= 0 for x in w):
            raise ValueError(f"{_CASCADE}.BBOX_REG_WEIGHTS[{k}] = {w!r}: weights must be positive.")
    for k, w in enumerate(loss_weights):
        if not isinstance(w, Real) or w < 0:
            raise ValueError(
                f"{_CASCADE}.STAGE_LOSS_WEIGHTS[{k}] = {w!r}: a loss weight must be a number >= 0."
            )
    if any(b <= a for a, b in zip(ious, ious[1:])):
        # Legal (the paper's Table 3 ablates equal IoUs), but usually a typo.
        logger.warning(
            f"{_CASCADE}.IOUS = {ious} does not increase from stage to stage; Cascade R-CNN "
            "relies on rising IoU thresholds."
        )
    return ious, reg_weights, loss_weights


def cascade_test_settings(cfg):
    """
    Return (test_score, num_test_stages): how the final scores are formed, and how many
    stages run at test time (TEST_STAGE, with -1 resolved). Raises ValueError naming the key.
    """
    node = cfg.MODEL.ROI_BOX_CASCADE_HEAD
    num_stages = len(node.IOUS)
    if node.TEST_SCORE not in TEST_SCORES:
        raise ValueError(
            f"{_CASCADE}.TEST_SCORE = {node.TEST_SCORE!r}: expected one of "
            f"{', '.join(TEST_SCORES)}."
        )
    stage = node.TEST_STAGE
    is_int = isinstance(stage, int) and not isinstance(stage, bool)
    if not (is_int and (stage == -1 or 1 <= stage <= num_stages)):
        raise ValueError(
            f"{_CASCADE}.TEST_STAGE = {stage!r}: expected -1 (all stages) or a stage in "
            f"1..{num_stages} (stages count from 1)."
        )
    return node.TEST_SCORE, num_stages if stage == -1 else stage


def cascade_prune_topk(cfg):
    """Return TEST_PRUNE_TOPK after checking it is an int >= 0 (0: off)."""
    k = cfg.MODEL.ROI_BOX_CASCADE_HEAD.TEST_PRUNE_TOPK
    if not (isinstance(k, int) and not isinstance(k, bool) and k >= 0):
        raise ValueError(
            f"{_CASCADE}.TEST_PRUNE_TOPK = {k!r}: expected an integer >= 0 "
            "(0 turns pruning off)."
        )
    return k


def cascade_prune_nms_thresh(cfg):
    """Return TEST_PRUNE_NMS_THRESH after checking it is an IoU in (0, 1] (1: off)."""
    thresh = cfg.MODEL.ROI_BOX_CASCADE_HEAD.TEST_PRUNE_NMS_THRESH
    if not (isinstance(thresh, Real) and not isinstance(thresh, bool) and 0 < thresh <= 1):
        raise ValueError(
            f"{_CASCADE}.TEST_PRUNE_NMS_THRESH = {thresh!r}: expected an IoU in (0, 1] "
            "(1.0 turns it off)."
        )
    return float(thresh)


def cascade_switch(cfg, key):
    """Return the on/off option `key` of the cascade node, after checking it is a bool."""
    value = cfg.MODEL.ROI_BOX_CASCADE_HEAD[key]
    if not isinstance(value, bool):
        raise ValueError(f"{_CASCADE}.{key} = {value!r}: expected True or False.")
    return value
