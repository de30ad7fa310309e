"""
Config keys of the cascade, and the checks that turn a bad value into an error naming the
key. The checks are pure functions of a value and its name, so that the YAML keys and the
constructor arguments of `CascadeRCNNROIHeads` (LazyConfig) share them. They raise
`ConfigError`, a ValueError that `train_net.py` reports in one line.
"""

import logging
from numbers import Real

from detectron2.config import CfgNode as CN

from .errors import ConfigError

logger = logging.getLogger(__name__)

_CASCADE = "MODEL.ROI_BOX_CASCADE_HEAD"
TEST_SCORES = ("mean", "mean_logits", "mean_on_final", "last")
TEST_NMS_METHODS = ("hard", "linear", "gaussian")


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
    # The stages disagree on the boxes they score: "mean" averages each stage's class
    # probabilities of its own input boxes (detectron2); "mean_logits" averages their class
    # logits and takes the probabilities after (mmdetection); "mean_on_final" has every
    # stage's classifier score the final boxes (the paper's ensemble); "last" measures the
    # last stage without the ensemble.
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
    # time on a CPU. True pools CPU float tensors with layers/roi_align.py's kernel over
    # all of torch's threads, which gives the same bits (outputs and gradients); it is
    # built on first use. False keeps torchvision's kernel. No effect on GPUs or exports.
    _C.MODEL.ROI_BOX_CASCADE_HEAD.PARALLEL_CPU_ROI_ALIGN = True
    # The final per-class NMS. "hard" removes every box that overlaps a kept one by more
    # than MODEL.ROI_HEADS.NMS_THRESH_TEST (detectron2). Soft-NMS (Bodla et al. 2017) lowers
    # their scores instead, which keeps touching objects apart: "linear" multiplies by
    # (1 - IoU) where IoU > NMS_THRESH_TEST, "gaussian" by exp(-IoU^2 / TEST_SOFT_NMS_SIGMA).
    # Test time only; exports refuse soft-NMS (its loop runs once per kept box).
    _C.MODEL.ROI_BOX_CASCADE_HEAD.TEST_NMS_METHOD = "hard"
    _C.MODEL.ROI_BOX_CASCADE_HEAD.TEST_SOFT_NMS_SIGMA = 0.5
    # Soft-NMS drops a box once its decayed score falls below this.
    _C.MODEL.ROI_BOX_CASCADE_HEAD.TEST_SOFT_NMS_MIN_SCORE = 0.001
    # detectron2's mapper drops crowd (iscrowd) annotations, so a box inside a crowd is
    # trained as background. With a threshold >= 0, the mapper keeps the crowd regions, and
    # at every stage a box whose intersection over its own area with a crowd region exceeds
    # it is ignored: neither positive nor negative, and not sampled (mmdetection's
    # ignore_iof_thr, Detectron's CROWD_FILTER_THRESH). The RPN is unchanged. Negative: off.
    _C.MODEL.ROI_BOX_CASCADE_HEAD.IGNORE_IOF_THRESH = -1.0

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
        raise ConfigError(f"{_CASCADE}.IOUS is empty: a cascade needs at least one stage.")
    check_one_per_stage(reg_weights, f"{_CASCADE}.BBOX_REG_WEIGHTS", len(ious), f"{_CASCADE}.IOUS")
    check_stage_loss_weights(
        loss_weights, f"{_CASCADE}.STAGE_LOSS_WEIGHTS", len(ious), f"{_CASCADE}.IOUS"
    )
    for k, iou in enumerate(ious):
        _require(
            isinstance(iou, Real) and 0.0 < iou < 1.0,
            f"{_CASCADE}.IOUS[{k}]",
            iou,
            "an IoU threshold must lie in (0, 1)",
        )
    for k, w in enumerate(reg_weights):
        name = f"{_CASCADE}.BBOX_REG_WEIGHTS[{k}]"
        _require(
            isinstance(w, tuple) and len(w) == 4 and all(isinstance(x, Real) for x in w),
            name,
            w,
            "expected 4 numbers (wx, wy, ww, wh)",
        )
        _require(all(x > 0 for x in w), name, w, "weights must be positive")
    if any(b <= a for a, b in zip(ious, ious[1:])):
        # Legal (the paper's Table 3 ablates equal IoUs), but usually a typo.
        logger.warning(
            f"{_CASCADE}.IOUS = {ious} does not increase from stage to stage; Cascade R-CNN "
            "relies on rising IoU thresholds."
        )
    return ious, reg_weights, loss_weights


def cascade_head_arguments(cfg):
    """The options of `CascadeRCNNROIHeads` beyond its per-stage modules, read from `cfg`."""
    node = cfg.MODEL.ROI_BOX_CASCADE_HEAD
    num_stages = len(node.IOUS)
    check_test_score(node.TEST_SCORE, f"{_CASCADE}.TEST_SCORE")
    check_num_test_stages(
        None if node.TEST_STAGE == -1 else node.TEST_STAGE,
        num_stages,
        f"{_CASCADE}.TEST_STAGE",
        "-1 (all stages) or ",
    )
    check_prune_topk(node.TEST_PRUNE_TOPK, f"{_CASCADE}.TEST_PRUNE_TOPK")
    check_prune_nms_thresh(node.TEST_PRUNE_NMS_THRESH, f"{_CASCADE}.TEST_PRUNE_NMS_THRESH")
    check_ignore_iof_thresh(node.IGNORE_IOF_THRESH, f"{_CASCADE}.IGNORE_IOF_THRESH")
    check_soft_nms(
        node.TEST_NMS_METHOD,
        node.TEST_SOFT_NMS_SIGMA,
        node.TEST_SOFT_NMS_MIN_SCORE,
        [
            f"{_CASCADE}.{key}"
            for key in ("TEST_NMS_METHOD", "TEST_SOFT_NMS_SIGMA", "TEST_SOFT_NMS_MIN_SCORE")
        ],
    )
    return {
        "scale_feature_gradient": cascade_switch(cfg, "SCALE_FEATURE_GRADIENT"),
        "test_score": node.TEST_SCORE,
        "num_test_stages": None if node.TEST_STAGE == -1 else node.TEST_STAGE,
        "resample": cascade_switch(cfg, "RESAMPLE"),
        "test_prune_topk": node.TEST_PRUNE_TOPK,
        "test_prune_nms_thresh": float(node.TEST_PRUNE_NMS_THRESH),
        "test_nms_method": node.TEST_NMS_METHOD,
        "test_soft_nms_sigma": float(node.TEST_SOFT_NMS_SIGMA),
        "test_soft_nms_min_score": float(node.TEST_SOFT_NMS_MIN_SCORE),
        "ignore_iof_thresh": float(node.IGNORE_IOF_THRESH),
    }


def cascade_switch(cfg, key):
    """Return the on/off option `key` of the cascade node, after checking it is a bool."""
    value = cfg.MODEL.ROI_BOX_CASCADE_HEAD[key]
    _require(isinstance(value, bool), f"{_CASCADE}.{key}", value, "expected True or False")
    return value


# Checks of one value, named `name` in the error: a config key, or a constructor argument.


def _require(ok, name, value, expected):
    if not ok:
        raise ConfigError(f"{name} = {value!r}: {expected}.")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def check_one_per_stage(values, name, num_stages, stages_name):
    if len(values) != num_stages:
        raise ConfigError(
            f"{name} has {len(values)} entries but {stages_name} has {num_stages}: give one "
            "entry per stage."
        )


def check_stage_loss_weights(weights, name, num_stages, stages_name):
    check_one_per_stage(weights, name, num_stages, stages_name)
    for k, w in enumerate(weights):
        _require(
            isinstance(w, Real) and w >= 0, f"{name}[{k}]", w, "a loss weight must be a number >= 0"
        )


def check_test_score(value, name):
    _require(value in TEST_SCORES, name, value, f"expected one of {', '.join(TEST_SCORES)}")


def check_num_test_stages(value, num_stages, name, also=""):
    """`value` is None (every stage) or k in 1..num_stages."""
    _require(
        value is None or (_is_int(value) and 1 <= value <= num_stages),
        name,
        value,
        f"expected {also}a stage in 1..{num_stages} (stages count from 1)",
    )


def check_prune_topk(value, name):
    _require(
        _is_int(value) and value >= 0, name, value, "expected an integer >= 0 (0 turns pruning off)"
    )


def check_prune_nms_thresh(value, name):
    _require(
        isinstance(value, Real) and not isinstance(value, bool) and 0 < value <= 1,
        name,
        value,
        "expected an IoU in (0, 1] (1.0 turns it off)",
    )


def check_ignore_iof_thresh(value, name):
    _require(
        isinstance(value, Real) and not isinstance(value, bool) and value < 1,
        name,
        value,
        "expected an intersection over area below 1 (negative turns it off)",
    )


def check_soft_nms(method, sigma, min_score, names):
    """The final NMS's method, soft-NMS sigma and minimum score, named by `names` in errors."""
    method_name, sigma_name, min_score_name = names
    _require(
        method in TEST_NMS_METHODS,
        method_name,
        method,
        f"expected one of {', '.join(TEST_NMS_METHODS)}",
    )
    _require(
        isinstance(sigma, Real) and not isinstance(sigma, bool) and sigma > 0,
        sigma_name,
        sigma,
        "expected a number > 0",
    )
    _require(
        isinstance(min_score, Real) and not isinstance(min_score, bool) and 0 <= min_score < 1,
        min_score_name,
        min_score,
        "expected a score in [0, 1)",
    )


def check_head_arguments(
    *,
    box_heads,
    box_predictors,
    proposal_matchers,
    stage_loss_weights=None,
    test_score="mean",
    num_test_stages=None,
    test_prune_topk=0,
    test_prune_nms_thresh=1.0,
    test_nms_method="hard",
    test_soft_nms_sigma=0.5,
    test_soft_nms_min_score=0.001,
    ignore_iof_thresh=-1.0,
    **unchecked,
):
    """
    Check the constructor arguments of `CascadeRCNNROIHeads` (a LazyConfig's), naming the one
    that is wrong. Only lengths and values are read, so arguments can be checked before the
    modules they describe are built.
    """
    name, num_stages = "CascadeRCNNROIHeads argument ", len(box_heads)
    if num_stages == 0:
        raise ConfigError(f"{name}box_heads is empty: a cascade needs at least one stage.")
    stages = name + "box_heads"
    check_one_per_stage(box_predictors, name + "box_predictors", num_stages, stages)
    check_one_per_stage(proposal_matchers, name + "proposal_matchers", num_stages, stages)
    if stage_loss_weights is not None:
        check_stage_loss_weights(
            stage_loss_weights, name + "stage_loss_weights", num_stages, stages
        )
    check_test_score(test_score, name + "test_score")
    check_num_test_stages(num_test_stages, num_stages, name + "num_test_stages", "None or ")
    check_prune_topk(test_prune_topk, name + "test_prune_topk")
    check_prune_nms_thresh(test_prune_nms_thresh, name + "test_prune_nms_thresh")
    check_soft_nms(
        test_nms_method,
        test_soft_nms_sigma,
        test_soft_nms_min_score,
        [
            name + arg
            for arg in ("test_nms_method", "test_soft_nms_sigma", "test_soft_nms_min_score")
        ],
    )
    check_ignore_iof_thresh(ignore_iof_thresh, name + "ignore_iof_thresh")
