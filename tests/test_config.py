"""
projects/cascade/config.py: the option table, the defaults `add_cascade_config` adds, and the
checks that turn a bad value of a cascade key into a ValueError naming the key, called on the
config alone.
"""

import logging

import pytest

from detectron2.config import get_cfg

from projects.cascade import CascadeRCNNROIHeads, add_cascade_config
from projects.cascade.config import (
    OPTIONS,
    check_cascade_config,
    head_arguments,
    options_markdown,
    stage_settings,
)
from tests.helpers import REPO

KEY = "MODEL.ROI_BOX_CASCADE_HEAD"
ONE_PER_STAGE = "give one entry per stage."


def _cfg(**cascade_keys):
    cfg = get_cfg()
    add_cascade_config(cfg)
    for key, value in cascade_keys.items():
        setattr(cfg.MODEL.ROI_BOX_CASCADE_HEAD, key, value)
    return cfg


def _flat(node, prefix=""):
    out = {}
    for k, v in node.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def test_add_cascade_config_keeps_detectron2_defaults():
    plain_keys, our_keys = _flat(get_cfg()), _flat(_cfg())
    assert {k: our_keys[k] for k in plain_keys} == plain_keys


def test_defaults_follow_the_design():
    cfg = _cfg()
    node = cfg.MODEL.ROI_BOX_CASCADE_HEAD
    assert node.STAGE_LOSS_WEIGHTS == (1.0, 1.0, 1.0)
    assert node.SCALE_FEATURE_GRADIENT is True
    assert (node.TEST_SCORE, node.TEST_STAGE, node.RESAMPLE, node.MASK_PER_STAGE) == (
        "mean",
        -1,
        False,
        False,
    )
    assert (node.TEST_PRUNE_TOPK, node.TEST_PRUNE_NMS_THRESH) == (0, 1.0)
    assert node.PARALLEL_CPU_ROI_ALIGN is True
    assert cfg.TEST.CASCADE_STAGE_EVAL is False


# ------------------------------------------------------------ per-stage lists


def test_every_option_is_in_the_config_and_the_heads_docstring():
    node = _cfg().MODEL.ROI_BOX_CASCADE_HEAD
    for option in OPTIONS:
        assert node[option.key] == option.default
        if option.argument:
            assert f"{option.argument} ({option.key}, " in CascadeRCNNROIHeads.__doc__
            assert option.meaning in CascadeRCNNROIHeads.__doc__


def test_stage_settings_of_the_defaults():
    ious, reg_weights = stage_settings(_cfg())
    assert ious == [0.5, 0.6, 0.7]
    assert reg_weights == [
        (10.0, 10.0, 5.0, 5.0),
        (20.0, 20.0, 10.0, 10.0),
        (30.0, 30.0, 15.0, 15.0),
    ]


@pytest.mark.parametrize(
    "keys, message",
    [
        (
            {"BBOX_REG_WEIGHTS": [(10, 10, 5, 5), (20, 20, 10, 10)]},
            f"{KEY}.BBOX_REG_WEIGHTS has 2 entries but {KEY}.IOUS has 3: {ONE_PER_STAGE}",
        ),
        (
            {"STAGE_LOSS_WEIGHTS": [1.0]},
            f"{KEY}.STAGE_LOSS_WEIGHTS = [1.0]: expected one number >= 0 per stage, for 3 stages.",
        ),
        (  # fewer IoUs than the other lists' default 3 entries
            {"IOUS": [0.5, 0.6]},
            f"{KEY}.BBOX_REG_WEIGHTS has 3 entries but {KEY}.IOUS has 2: {ONE_PER_STAGE}",
        ),
        (
            {"IOUS": [0.5, 1.2, 0.7]},
            f"{KEY}.IOUS[1] = 1.2: an IoU threshold must lie in (0, 1).",
        ),
        (
            {"IOUS": [0.0, 0.6, 0.7]},
            f"{KEY}.IOUS[0] = 0.0: an IoU threshold must lie in (0, 1).",
        ),
        (
            {"IOUS": [], "BBOX_REG_WEIGHTS": [], "STAGE_LOSS_WEIGHTS": []},
            f"{KEY}.IOUS is empty: a cascade needs at least one stage.",
        ),
        (
            {"BBOX_REG_WEIGHTS": [(10, 10, 5), (20, 20, 10, 10), (30, 30, 15, 15)]},
            f"{KEY}.BBOX_REG_WEIGHTS[0] = (10, 10, 5): expected 4 numbers (wx, wy, ww, wh).",
        ),
        (
            {"BBOX_REG_WEIGHTS": [(10, 10, 5, 5), (20, 20, 0, 10), (30, 30, 15, 15)]},
            f"{KEY}.BBOX_REG_WEIGHTS[1] = (20, 20, 0, 10): weights must be positive.",
        ),
        (
            {"STAGE_LOSS_WEIGHTS": [1.0, -0.5, 0.25]},
            f"{KEY}.STAGE_LOSS_WEIGHTS = [1.0, -0.5, 0.25]: expected one number >= 0 per stage, "
            "for 3 stages.",
        ),
    ],
    ids=[
        "reg-weights-length",
        "loss-weights-length",
        "ious-length",
        "iou-above-1",
        "iou-0",
        "no-stage",
        "reg-weights-3-numbers",
        "reg-weight-0",
        "negative-loss-weight",
    ],
)
def test_bad_stage_lists_name_the_key(keys, message):
    with pytest.raises(ValueError) as e:
        check_cascade_config(_cfg(**keys))
    assert str(e.value) == message


def test_non_increasing_ious_warn(caplog):
    with caplog.at_level(logging.WARNING, logger="projects.cascade.config"):
        check_cascade_config(_cfg(IOUS=[0.5, 0.7, 0.6]))
    assert f"{KEY}.IOUS = [0.5, 0.7, 0.6] does not increase from stage to stage" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="projects.cascade.config"):
        check_cascade_config(_cfg())
    assert "does not increase" not in caplog.text


# ------------------------------------------------------------- head options


def test_head_arguments_of_the_defaults_and_of_valid_values():
    assert head_arguments(_cfg()) == {
        "stage_loss_weights": [1.0, 1.0, 1.0],
        "scale_feature_gradient": True,
        "test_score": "mean",
        "num_test_stages": None,
        "resample": False,
        "test_prune_topk": 0,
        "test_prune_nms_thresh": 1.0,
        "test_nms_method": "hard",
        "test_soft_nms_sigma": 0.5,
        "test_soft_nms_min_score": 0.001,
        "ignore_iof_thresh": -1.0,
    }
    arguments = head_arguments(
        _cfg(
            TEST_SCORE="last",
            TEST_STAGE=3,
            RESAMPLE=True,
            SCALE_FEATURE_GRADIENT=False,
            TEST_PRUNE_TOPK=5,
            TEST_PRUNE_NMS_THRESH=1,
            TEST_NMS_METHOD="gaussian",
            TEST_SOFT_NMS_SIGMA=1,
            TEST_SOFT_NMS_MIN_SCORE=0,
            IGNORE_IOF_THRESH=0,
        )
    )
    assert arguments == {
        "stage_loss_weights": [1.0, 1.0, 1.0],
        "scale_feature_gradient": False,
        "test_score": "last",
        "num_test_stages": 3,
        "resample": True,
        "test_prune_topk": 5,
        "test_prune_nms_thresh": 1.0,
        "test_nms_method": "gaussian",
        "test_soft_nms_sigma": 1.0,
        "test_soft_nms_min_score": 0.0,
        "ignore_iof_thresh": 0.0,
    }
    for key in (
        "test_prune_nms_thresh",
        "test_soft_nms_sigma",
        "test_soft_nms_min_score",
        "ignore_iof_thresh",
    ):
        assert type(arguments[key]) is float


EXPECTED = {
    "TEST_SCORE": "expected one of mean, mean_logits, mean_on_final, last.",
    "TEST_STAGE": "expected a stage in 1..3 (stages count from 1), or -1 or None for all.",
    "TEST_PRUNE_TOPK": "expected an integer >= 0 (0 turns pruning off).",
    "TEST_PRUNE_NMS_THRESH": "expected an IoU in (0, 1] (1.0 turns it off).",
    "TEST_NMS_METHOD": "expected one of hard, linear, gaussian.",
    "TEST_SOFT_NMS_SIGMA": "expected a number > 0.",
    "TEST_SOFT_NMS_MIN_SCORE": "expected a score in [0, 1).",
    "IGNORE_IOF_THRESH": "expected an intersection over area below 1 (negative turns it off).",
}


@pytest.mark.parametrize(
    "key, value",
    [
        ("TEST_SCORE", "max"),
        *[("TEST_STAGE", v) for v in (0, 4, -2)],
        *[("TEST_PRUNE_TOPK", v) for v in (-1, 1.5, True, "100", None)],
        *[("TEST_PRUNE_NMS_THRESH", v) for v in (0, -0.1, 1.5, True, "0.7", None)],
        *[("TEST_NMS_METHOD", v) for v in ("soft", "Linear", None)],
        *[("TEST_SOFT_NMS_SIGMA", v) for v in (0, -1.0, True, "0.5")],
        *[("TEST_SOFT_NMS_MIN_SCORE", v) for v in (-0.1, 1.0, True, "0")],
        *[("IGNORE_IOF_THRESH", v) for v in (1.0, 2, True, "0.5")],
    ],
)
def test_bad_head_options_name_the_key(key, value):
    with pytest.raises(ValueError) as e:
        check_cascade_config(_cfg(**{key: value}))
    assert str(e.value) == f"{KEY}.{key} = {value!r}: {EXPECTED[key]}"


@pytest.mark.parametrize(
    "key", ["SCALE_FEATURE_GRADIENT", "RESAMPLE", "MASK_PER_STAGE", "PARALLEL_CPU_ROI_ALIGN"]
)
def test_switches_take_only_booleans(key):
    check_cascade_config(_cfg(**{key: True}))
    check_cascade_config(_cfg(**{key: False}))
    for value in ("yes", 1):
        with pytest.raises(ValueError) as e:
            check_cascade_config(_cfg(**{key: value}))
        assert str(e.value) == f"{KEY}.{key} = {value!r}: expected True or False."


def test_the_configuration_page_shows_the_table_of_options():
    page = (REPO / "docs" / "configuration.md").read_text()
    assert options_markdown() in page
