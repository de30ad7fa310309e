"""
What each stage does: the localization pairs on hand-set stages whose moves, and so the IoUs,
are known; the AP at each IoU threshold of every stage alone and of the model against the
standard evaluation of such models.
"""

import json

import numpy as np
import pytest
import torch

from detectron2.evaluation import inference_on_dataset
from detectron2.structures import Boxes, Instances

from projects.cascade.evaluation import COCOEvaluatorAtIoUs
from projects.cascade.evaluation.stage_quality import (
    AP_IOUS,
    MODEL_SET,
    StageAPByIoU,
    format_tables,
    localization_curves,
    localization_pairs,
    save,
    summarize,
)
from projects.cascade.modeling.stage_outputs import CascadeStageOutputs
from tests.helpers import FixedProposals, build, build_like, set_predictor, tiny_cfg

# Two 40 x 40 ground-truth boxes side by side, 6 px apart: their left edges.
GT_X0 = (50.0, 96.0)
TOP, BOTTOM = 20.0, 60.0
# Proposals: the first GT box moved left by these, one box between the two (its best match
# changes as the stages move it), and one far from both (IoU 0 with each).
SHIFTS = (0.0, 4.0, 8.0, 12.0, 20.0)
BETWEEN_X0 = 70.0
FAR = [0.0, 90.0, 30.0, 120.0]
# Stage k moves every box this many px right: stages 1 and 2 towards the GT, stage 3 back.
MOVES = (4.0, 4.0, -4.0)


def _iou(x0, gt_x0):
    """Two 40 x 40 boxes at the same height, with these left edges."""
    overlap = max(40.0 - abs(x0 - gt_x0), 0.0) * 40.0
    return overlap / (2 * 40.0 * 40.0 - overlap)


def _expected_pairs(stage):
    """(input IoU, output IoU) of each proposal at `stage`, worked out from the moves alone."""
    moved = sum(MOVES[:stage])
    pairs = []
    for x0 in [GT_X0[0] - d for d in SHIFTS] + [BETWEEN_X0]:
        x_in = x0 + moved
        gt = max(GT_X0, key=lambda g: _iou(x_in, g))
        pairs.append((_iou(x_in, gt), _iou(x_in + MOVES[stage], gt)))
    return pairs + [(0.0, 0.0)]  # the far box


def _model(class_specific):
    """
    Every stage moves each box by MOVES[k]; with class-specific regression only the top
    class (2) does, the other classes move boxes elsewhere.
    """
    model = build(tiny_cfg(class_specific=class_specific))
    for k, predictor in enumerate(model.roi_heads.box_predictor):
        # Box2BoxTransform weight for x is 10 (k + 1); dx moves a 40 px box by 40 dx / weight.
        dx = MOVES[k] * 10.0 * (k + 1) / 40.0
        if class_specific:
            deltas = [-dx, 0.0, 0.0, 0.0, -2 * dx, 0.0, 0.0, 0.0, dx, 0.0, 0.0, 0.0]
            set_predictor(predictor, class_logits=[0.0, 1.0, 3.0, 0.5], deltas=deltas)
        else:
            set_predictor(predictor, deltas=[dx, 0.0, 0.0, 0.0])
    proposals = [[x0, TOP, x0 + 40.0, BOTTOM] for x0 in [GT_X0[0] - d for d in SHIFTS]]
    proposals += [[BETWEEN_X0, TOP, BETWEEN_X0 + 40.0, BOTTOM], FAR]
    model.proposal_generator = FixedProposals(torch.tensor(proposals))
    return model.eval()


def _batch():
    """One image with both GT boxes, one without ground truth."""
    gt_boxes = [[x0, TOP, x0 + 40.0, BOTTOM] for x0 in GT_X0]
    batch = []
    for boxes in (gt_boxes, []):
        gt = Instances((128, 160), gt_boxes=Boxes(torch.tensor(boxes).reshape(-1, 4)))
        gt.gt_classes = torch.zeros(len(boxes), dtype=torch.long)
        batch.append(
            {"image": torch.zeros(3, 128, 160), "height": 128, "width": 160, "instances": gt}
        )
    return batch


@pytest.mark.parametrize("class_specific", [False, True])
def test_localization_pairs_are_the_known_ones(class_specific):
    pairs = localization_pairs(_model(class_specific), _batch())
    assert len(pairs) == 3
    for k, got in enumerate(pairs):
        # The image without ground truth gives no rows.
        torch.testing.assert_close(got, torch.tensor(_expected_pairs(k)))
    # The box between the GT boxes: stage 1 moves it off its match (1/3 -> 1/4); stage 2
    # measures it against the other GT box, which it now overlaps more.
    assert pairs[0][5].tolist() == pytest.approx([1 / 3, 0.25])
    assert pairs[1][5, 0] == pytest.approx(720 / 2480)


def test_localization_pairs_need_eval_mode():
    model = _model(False).train()
    with pytest.raises(RuntimeError, match="call .eval"):
        localization_pairs(model, _batch())


def test_localization_curves_bin_by_input_iou():
    pairs = torch.tensor(
        [[0.3, 0.9], [0.5, 0.6], [0.52, 0.7], [0.549, 0.8], [0.56, 0.5], [0.97, 0.99], [1.0, 1.0]]
    )
    (curve,) = localization_curves([pairs])
    assert curve["boxes"] == 7
    bins = curve["bins"]
    assert len(bins) == 10
    assert bins[0]["boxes"] == 3  # 0.3 is below every bin
    assert bins[0]["mean_input_iou"] == pytest.approx((0.5 + 0.52 + 0.549) / 3, abs=1e-6)
    assert bins[0]["mean_output_iou"] == pytest.approx(0.7, abs=1e-6)
    assert bins[1]["boxes"] == 1 and bins[1]["mean_output_iou"] == pytest.approx(0.5)
    assert bins[9]["boxes"] == 2  # IoU 1.0 falls in the last bin
    assert bins[9]["mean_output_iou"] == pytest.approx(0.995, abs=1e-6)
    assert bins[5] == {"boxes": 0, "mean_input_iou": None, "mean_output_iou": None}


def test_tables_and_files(tmp_path):
    pairs = [torch.tensor([[0.5, 0.6], [0.52, 0.7], [0.9, 0.92]]), torch.tensor([[0.6, 0.65]])]
    aps = {"1": [50.0 - 5 * i for i in range(10)], "2": [40.0] * 10, MODEL_SET: [45.0] * 10}
    summary = summarize(pairs, aps, test_score="mean")
    json_path, png_path = tmp_path / "q.json", tmp_path / "q.png"
    save(summary, json_path, png_path, title="known pairs")
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(summary))
    png = png_path.read_bytes()
    assert png[:4] == b"\x89PNG" and len(png) < 200_000
    table = format_tables(summary)
    assert "| 0.50-0.55 | 2, 0.650 | 0, - |" in table
    assert "| 0.60-0.65 | 0, - | 1, 0.650 |" in table
    assert "| 1~2, the model's output | 45.0 |" in table
    assert "| 1 | 50.0 | 45.0 | 40.0 |" in table
    last = format_tables(summarize(pairs, aps, test_score="last"))
    assert "| 2, the model's output (TEST_SCORE last) |" in last


# ---------------------------------------------------------------- AP at each IoU


@pytest.fixture(scope="module")
def stage_aps(detected_dataset):
    name, model, inputs, output_dir = detected_dataset
    aps = StageAPByIoU(name, str(output_dir))
    with torch.no_grad():
        for x in inputs:
            aps.process([x], CascadeStageOutputs(model)([x]))
    return aps.evaluate()


def _standard(detected_dataset, model):
    name, _, inputs, output_dir = detected_dataset
    evaluator = COCOEvaluatorAtIoUs(name, output_dir=str(output_dir))
    return inference_on_dataset(model, [[x] for x in inputs], evaluator)["bbox"]


def _assert_is_standard(aps, standard):
    """AP50 and AP75 come from COCOeval's summary, AP60-AP90 from its precision array."""
    at = dict(zip(AP_IOUS, aps))
    assert at[0.5] == standard["AP50"] and at[0.75] == standard["AP75"]
    for t in (0.6, 0.7, 0.8, 0.9):
        assert at[t] == standard[f"AP{round(100 * t)}"]
    # COCO AP is the mean over the ten thresholds.
    assert np.mean(aps) == pytest.approx(standard["AP"], abs=1e-9)


def test_model_set_is_the_standard_evaluation(detected_dataset, stage_aps):
    standard = _standard(detected_dataset, detected_dataset[1])
    assert standard["AP"] > 10
    _assert_is_standard(stage_aps[MODEL_SET], standard)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_stage_alone_is_test_stage_with_its_own_scores(detected_dataset, stage_aps, stage):
    model = build_like(detected_dataset[1], tiny_cfg(TEST_STAGE=stage, TEST_SCORE="last"))
    _assert_is_standard(stage_aps[str(stage)], _standard(detected_dataset, model.eval()))


def test_the_sets_are_each_stage_and_the_model_and_differ(stage_aps):
    """Else the equalities above would prove nothing."""
    assert list(stage_aps) == ["1", "2", "3", MODEL_SET]
    assert all(len(aps) == 10 for aps in stage_aps.values())
    assert len({tuple(aps) for aps in stage_aps.values()}) == 4


def test_outputs_without_the_stages_are_refused(detected_dataset):
    name, model, inputs, output_dir = detected_dataset
    with torch.no_grad():
        outputs = model(inputs[:1])
    with pytest.raises(ValueError, match="CascadeStageOutputs.*only \\['instances'\\]"):
        StageAPByIoU(name, str(output_dir)).process(inputs[:1], outputs)
