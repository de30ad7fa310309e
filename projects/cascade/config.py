"""
The cascade's options, each defined once in `OPTIONS`: its YAML key, its argument of
`CascadeRCNNROIHeads`, its default, its check and its meaning. `add_cascade_config`, the head's
`from_config`, its argument check and its docstring are all made from that table.

A value is checked where it enters: a YAML config when `load_config` loads it
(`check_cascade_config`, errors name the key), a constructor argument when the head is built
(`check_head_arguments`, errors name the argument). Errors are `ConfigError`s, which
`train_net.py` prints in one line.
"""

import logging
from collections import abc
from numbers import Real
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

from detectron2.config import CfgNode

from .errors import ConfigError

__all__ = [
    "CASCADE_NODE",
    "OPTIONS",
    "OPTION_ARGUMENTS",
    "TEST_SCORES",
    "TEST_NMS_METHODS",
    "add_cascade_config",
    "check_cascade_config",
    "check_head_arguments",
    "head_arguments",
    "option_value",
    "options_docstring",
    "options_markdown",
    "stage_settings",
]

logger = logging.getLogger(__name__)

CASCADE_NODE = "MODEL.ROI_BOX_CASCADE_HEAD"
TEST_SCORES = ("mean", "mean_logits", "mean_on_final", "last")
TEST_NMS_METHODS = ("hard", "linear", "gaussian")


# Each check takes a value and the number of stages, and returns what is wrong with the value
# (the end of the error message), or None when it is valid.


def _boolean(value, num_stages):
    return None if isinstance(value, bool) else "expected True or False"


def _number(value):
    return isinstance(value, Real) and not isinstance(value, bool)


def _integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _stage_loss_weights(value, num_stages):
    if value is None:  # a constructor argument: 1 per stage
        return None
    numbers = isinstance(value, abc.Sequence) and not isinstance(value, str)
    numbers = numbers and all(_number(w) and w >= 0 for w in value)
    if numbers and len(value) == num_stages:
        return None
    return f"expected one number >= 0 per stage, for {num_stages} stages"


def _test_score(value, num_stages):
    return None if value in TEST_SCORES else f"expected one of {', '.join(TEST_SCORES)}"


def _test_stage(value, num_stages):
    if value is None or _integer(value) and (value == -1 or 1 <= value <= num_stages):
        return None
    return f"expected a stage in 1..{num_stages} (stages count from 1), or -1 or None for all"


def _prune_topk(value, num_stages):
    if _integer(value) and value >= 0:
        return None
    return "expected an integer >= 0 (0 turns pruning off)"


def _prune_nms_thresh(value, num_stages):
    return (
        None
        if _number(value) and 0 < value <= 1
        else "expected an IoU in (0, 1] (1.0 turns it off)"
    )


def _test_nms_method(value, num_stages):
    return None if value in TEST_NMS_METHODS else f"expected one of {', '.join(TEST_NMS_METHODS)}"


def _soft_nms_sigma(value, num_stages):
    return None if _number(value) and value > 0 else "expected a number > 0"


def _soft_nms_min_score(value, num_stages):
    return None if _number(value) and 0 <= value < 1 else "expected a score in [0, 1)"


def _ignore_iof_thresh(value, num_stages):
    if _number(value) and value < 1:
        return None
    return "expected an intersection over area below 1 (negative turns it off)"


def _float(value):
    return float(value)


def _all_stages_as_none(value):
    return None if value == -1 else value


def _as_list(value):
    return None if value is None else [float(w) for w in value]


class Option(NamedTuple):
    key: str  # in MODEL.ROI_BOX_CASCADE_HEAD
    # The argument of CascadeRCNNROIHeads; None for options that choose modules, which
    # `from_config` builds (the pooler's kernel, the mask heads).
    argument: Optional[str]
    default: Any  # in the YAML config
    check: Callable[[Any, int], Optional[str]]
    meaning: str
    # A valid value as the head keeps it (YAML's -1 for "all stages" is None, ...).
    to_argument: Optional[Callable[[Any], Any]] = None
    # The constructor's default where it differs from the converted YAML default.
    argument_default: Any = "same"


OPTIONS: Tuple[Option, ...] = (
    Option(
        "STAGE_LOSS_WEIGHTS",
        "stage_loss_weights",
        (1.0, 1.0, 1.0),
        _stage_loss_weights,
        "Multiplies every loss of stage k: its box classification and regression losses, and "
        "its mask loss when masks are per stage. detectron2 sums the stages' losses (1 per "
        "stage, the constructor's default None); mmdetection and the paper's code use "
        "(1, 0.5, 0.25).",
        _as_list,
        argument_default=None,
    ),
    Option(
        "SCALE_FEATURE_GRADIENT",
        "scale_feature_gradient",
        True,
        _boolean,
        "detectron2 scales the gradient flowing into the pooled box features by 1/num_stages, "
        "so that the backbone gets one stage's worth while every head gets its full loss. "
        "False lets the full sum through (mmdetection).",
    ),
    Option(
        "TEST_SCORE",
        "test_score",
        "mean",
        _test_score,
        "How the stages' class scores make the detections' scores. \"mean\": each stage "
        "scores its own input boxes and the probabilities are averaged (detectron2); "
        '"mean_logits": the class logits are averaged, then the softmax taken (mmdetection); '
        "\"mean_on_final\": every stage's classifier scores the final boxes (the paper's "
        'ensemble); "last": the last stage alone.',
    ),
    Option(
        "TEST_STAGE",
        "num_test_stages",
        -1,
        _test_stage,
        "Stop inference after stage k (counting from 1), to measure what each stage adds "
        "without training a shorter cascade. -1 (None as an argument) runs every stage.",
        _all_stages_as_none,
    ),
    Option(
        "RESAMPLE",
        "resample",
        False,
        _boolean,
        "False keeps every box that stage 1 sampled and later stages refined (detectron2, the "
        "paper), so later stages see ever more positives. True re-samples every stage at "
        "ROI_HEADS.BATCH_SIZE_PER_IMAGE and POSITIVE_FRACTION, with exact ground-truth boxes "
        "in place of the regressed ones (mmdetection).",
    ),
    Option(
        "MASK_PER_STAGE",
        None,
        False,
        _boolean,
        "With MODEL.MASK_ON, a single mask head learns from stage 1's positives (detectron2). "
        "True trains one mask head per stage on that stage's positives and averages their "
        "masks at test time (mmdetection), for N times the mask head's cost. As an argument: "
        "a MaskHeadPerStage as mask_head.",
    ),
    Option(
        "TEST_PRUNE_TOPK",
        "test_prune_topk",
        0,
        _prune_topk,
        "Test time: only the top-k boxes of each image by stage-1 foreground score go on to "
        "stages 2..N; the others are dropped from the detections (they have no later score to "
        "average). Most proposals are background that stage 1 already scores low. 0: off.",
    ),
    Option(
        "TEST_PRUNE_NMS_THRESH",
        "test_prune_nms_thresh",
        1.0,
        _prune_nms_thresh,
        "Test time: after stage 1 near-copies converge on the same objects. A threshold < 1 "
        "runs NMS at that IoU among stage 1's refined boxes (per top class, by stage-1 "
        "foreground score) and sends only the survivors on, before TEST_PRUNE_TOPK; the "
        "others are dropped from the detections. 1.0: off.",
        _float,
    ),
    Option(
        "PARALLEL_CPU_ROI_ALIGN",
        None,
        True,
        _boolean,
        "torchvision's CPU RoIAlign runs on one thread, and RoIAlign is most of the stages' "
        "time on a CPU. True pools CPU float tensors with layers/roi_align.py's kernel over "
        "all of torch's threads, which gives the same bits; False keeps torchvision's. No "
        "effect on GPUs or exports. As an argument: parallelize_pooler(box_pooler).",
    ),
    Option(
        "TEST_NMS_METHOD",
        "test_nms_method",
        "hard",
        _test_nms_method,
        'The final per-class NMS. "hard" removes every box that overlaps a kept one by more '
        "than MODEL.ROI_HEADS.NMS_THRESH_TEST (detectron2). Soft-NMS (Bodla et al. 2017) "
        'lowers their scores instead: "linear" multiplies by (1 - IoU) where IoU > '
        'NMS_THRESH_TEST, "gaussian" by exp(-IoU^2 / TEST_SOFT_NMS_SIGMA). Exports refuse '
        "soft-NMS (its loop runs once per kept box).",
    ),
    Option(
        "TEST_SOFT_NMS_SIGMA",
        "test_soft_nms_sigma",
        0.5,
        _soft_nms_sigma,
        "sigma of Gaussian soft-NMS.",
        _float,
    ),
    Option(
        "TEST_SOFT_NMS_MIN_SCORE",
        "test_soft_nms_min_score",
        0.001,
        _soft_nms_min_score,
        "Soft-NMS drops a box once its decayed score falls below this.",
        _float,
    ),
    Option(
        "IGNORE_IOF_THRESH",
        "ignore_iof_thresh",
        -1.0,
        _ignore_iof_thresh,
        "Training: detectron2's mapper drops crowd (iscrowd) annotations, so a box inside a "
        "crowd is trained as background. With a threshold >= 0 the mapper keeps the crowd "
        "regions, and at every stage a box whose intersection over its own area with one "
        "exceeds it is ignored: neither positive nor negative, and not sampled (mmdetection's "
        "ignore_iof_thr). The RPN is unchanged. Negative: off.",
        _float,
    ),
)

_BY_KEY = {option.key: option for option in OPTIONS}
_ARGUMENTS = {option.argument: option for option in OPTIONS if option.argument}
OPTION_ARGUMENTS = tuple(_ARGUMENTS)

# detectron2's keys of the node, one entry per stage: their checks are stage_settings'.
_STAGE_KEYS = ("IOUS", "BBOX_REG_WEIGHTS")


def add_cascade_config(cfg: CfgNode) -> None:
    """
    Add the cascade's keys (`OPTIONS`, and TEST.CASCADE_STAGE_EVAL) to `cfg`. No existing
    default changes, so a config valid for detectron2's built-in cascade gives the same model.
    """
    for option in OPTIONS:
        cfg.MODEL.ROI_BOX_CASCADE_HEAD[option.key] = option.default
    # Evaluate every stage alone and every ensemble of stages 1~k from the same inference
    # pass as the main COCO evaluation (cascade_stages.json and .md in the evaluator's
    # folder), to see what each stage adds at every IoU, as the paper's Table 4 does. It
    # costs one NMS and one COCOeval per stage and ensemble.
    cfg.TEST.CASCADE_STAGE_EVAL = False


def option_value(cfg: CfgNode, key: str) -> Any:
    """The value of option `key` as the head takes it, read from `cfg` (no check)."""
    option = _BY_KEY[key]
    value = cfg.MODEL.ROI_BOX_CASCADE_HEAD[key]
    return option.to_argument(value) if option.to_argument else value


def head_arguments(cfg: CfgNode) -> Dict[str, Any]:
    """The option arguments of `CascadeRCNNROIHeads`, read from `cfg`."""
    return {o.argument: option_value(cfg, o.key) for o in OPTIONS if o.argument}


def stage_settings(cfg: CfgNode) -> Tuple[List[float], List[Tuple[float, ...]]]:
    """The IoU threshold and the box-regression weights of each stage, read from `cfg`."""
    node = cfg.MODEL.ROI_BOX_CASCADE_HEAD
    return list(node.IOUS), [tuple(w) for w in node.BBOX_REG_WEIGHTS]


def check_cascade_config(cfg: CfgNode) -> None:
    """
    Check every cascade key of a YAML config: the stages' lists, then `OPTIONS`. Raises a
    `ConfigError` naming the first bad key; warns when the IoUs do not rise.
    """
    node = cfg.MODEL.ROI_BOX_CASCADE_HEAD
    ious, reg_weights = list(node.IOUS), list(node.BBOX_REG_WEIGHTS)
    if not ious:
        raise ConfigError(f"{CASCADE_NODE}.IOUS is empty: a cascade needs at least one stage.")
    _check_one_per_stage(reg_weights, f"{CASCADE_NODE}.BBOX_REG_WEIGHTS", len(ious), "IOUS")
    for k, iou in enumerate(ious):
        if not (_number(iou) and 0.0 < iou < 1.0):
            _fail(f"{CASCADE_NODE}.IOUS[{k}]", iou, "an IoU threshold must lie in (0, 1)")
    for k, w in enumerate(reg_weights):
        name, w = f"{CASCADE_NODE}.BBOX_REG_WEIGHTS[{k}]", tuple(w)
        if not (len(w) == 4 and all(_number(x) for x in w)):
            _fail(name, w, "expected 4 numbers (wx, wy, ww, wh)")
        if not all(x > 0 for x in w):
            _fail(name, w, "weights must be positive")
    for option in OPTIONS:
        _check(option, node[option.key], f"{CASCADE_NODE}.{option.key}", len(ious))
    if any(b <= a for a, b in zip(ious, ious[1:])):
        # Legal (the paper's Table 3 ablates equal IoUs), but usually a typo.
        logger.warning(
            f"{CASCADE_NODE}.IOUS = {ious} does not increase from stage to stage; Cascade "
            "R-CNN relies on rising IoU thresholds."
        )


def check_head_arguments(
    box_heads: Sequence, box_predictors: Sequence, proposal_matchers: Sequence, options: Dict
) -> Dict[str, Any]:
    """
    Check the arguments of `CascadeRCNNROIHeads`: one head, predictor and matcher per stage,
    and `options`, the `OPTIONS` given (by argument name). Raises a `ConfigError` naming the
    argument at fault. Returns every option argument as the head keeps it, the ones not
    given at their defaults.
    """
    prefix, num_stages = "CascadeRCNNROIHeads argument ", len(box_heads)
    if num_stages == 0:
        raise ConfigError(f"{prefix}box_heads is empty: a cascade needs at least one stage.")
    for name, modules in (
        ("box_predictors", box_predictors),
        ("proposal_matchers", proposal_matchers),
    ):
        _check_one_per_stage(modules, prefix + name, num_stages, "box_heads", name_prefix=prefix)
    arguments = {}
    for argument, option in _ARGUMENTS.items():
        if argument not in options:
            arguments[argument] = _argument_default(option)
            continue
        _check(option, options[argument], prefix + argument, num_stages)
        value = options[argument]
        arguments[argument] = option.to_argument(value) if option.to_argument else value
    return arguments


def options_docstring() -> str:
    """The options of `CascadeRCNNROIHeads` as docstring lines, from `OPTIONS`."""
    lines = ["Options (keyword arguments; YAML key in MODEL.ROI_BOX_CASCADE_HEAD, default):"]
    for option in OPTIONS:
        if option.argument:
            default = _argument_default(option)
            lines.append(f"    {option.argument} ({option.key}, {default!r}): {option.meaning}")
    return "\n".join(lines)


def options_markdown() -> str:
    """The table of `OPTIONS` in docs/configuration.md (a test keeps the page equal to it)."""
    lines = ["| key | default | constructor argument | meaning |", "|---|---|---|---|"]
    for o in OPTIONS:
        argument = f"`{o.argument}` = `{_argument_default(o)!r}`" if o.argument else "-"
        lines.append(f"| `{o.key}` | `{o.default!r}` | {argument} | {o.meaning} |")
    return "\n".join(lines)


def _argument_default(option: Option):
    if option.argument_default != "same":
        return option.argument_default
    return option.to_argument(option.default) if option.to_argument else option.default


def _check(option: Option, value, name: str, num_stages: int) -> None:
    problem = option.check(value, num_stages)
    if problem is not None:
        _fail(name, value, problem)


def _check_one_per_stage(values, name, num_stages, stages_key, name_prefix=f"{CASCADE_NODE}."):
    if len(values) != num_stages:
        raise ConfigError(
            f"{name} has {len(values)} entries but {name_prefix}{stages_key} has {num_stages}: "
            "give one entry per stage."
        )


def _fail(name, value, expected):
    raise ConfigError(f"{name} = {value!r}: {expected}.")
