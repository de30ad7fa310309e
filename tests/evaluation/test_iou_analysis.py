"""The IoU of each stage's input boxes, on hand-built boxes whose IoUs are known."""

import json

import numpy as np
import pytest
import torch

from detectron2.structures import Boxes, Instances

from projects.cascade.evaluation.iou_analysis import (
    IoUAnalysis,
    format_table,
    save,
    stage_input_ious,
)
from tests.helpers import FixedProposals, build, tiny_cfg

GT = [50.0, 20.0, 90.0, 60.0]  # 40 x 40, inside the image after every shift
SHIFTS = [0.0, 4.0, 8.0, 12.0, 20.0, 40.0]  # proposals: GT moved left by these


def _iou_of_shift(d):
    """Two 40 x 40 boxes, one moved sideways by d."""
    return max(40.0 - abs(d), 0.0) / (40.0 + min(abs(d), 40.0))


def _model(test_score):
    """Stages 1 and 2 move every box 4 px (0.1 of its width) right; stage 3 holds it."""
    cfg = tiny_cfg()
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512  # keep every box
    cfg.MODEL.ROI_BOX_CASCADE_HEAD.TEST_SCORE = test_score
    model = build(cfg)
    with torch.no_grad():
        for predictor, dx in zip(model.roi_heads.box_predictor, (1.0, 2.0, 0.0)):  # weights 10, 20
            predictor.bbox_pred.weight.zero_()
            predictor.bbox_pred.bias.copy_(torch.tensor([dx, 0.0, 0.0, 0.0]))
    proposals = torch.tensor([[GT[0] - d, GT[1], GT[2] - d, GT[3]] for d in SHIFTS])
    model.proposal_generator = FixedProposals(proposals)
    return model


def _batch():
    """One image with the GT box, one without ground truth."""
    batch = []
    for boxes in ([GT], []):
        gt = Instances((128, 160), gt_boxes=Boxes(torch.tensor(boxes).reshape(-1, 4)))
        gt.gt_classes = torch.zeros(len(boxes), dtype=torch.long)
        image = torch.zeros(3, 128, 160)
        batch.append({"image": image, "height": 128, "width": 160, "instances": gt})
    return batch


def _expected(stage, training):
    """Stage k's inputs have moved 4 px right per earlier moving stage (the GT box too)."""
    moved = 4.0 * min(stage, 2)
    ious = [_iou_of_shift(d - moved) for d in SHIFTS]
    if training:
        ious.append(_iou_of_shift(moved))  # the appended ground truth, moved like the rest
    return sorted(ious + [0.0] * len(SHIFTS))  # the image without ground truth


@pytest.mark.parametrize("test_score", ["mean", "mean_on_final"])
@pytest.mark.parametrize("training", [False, True])
def test_stage_input_ious_are_the_known_ones(test_score, training):
    model = _model(test_score)
    model.eval()
    ious = stage_input_ious(model, _batch(), training=training)
    assert len(ious) == 3
    for k, got in enumerate(ious):
        torch.testing.assert_close(got.sort().values, torch.tensor(_expected(k, training)))
    assert not model.training, "the model's mode is restored"
    assert len(set(round(float(i.sum()), 4) for i in ious)) == 3, "the stages must differ"


def test_training_mode_updates_nothing():
    model = _model("mean")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stage_input_ious(model, _batch(), training=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_summary_fractions_histogram_and_files(tmp_path):
    analysis = IoUAnalysis()
    for training, mode in ((True, "training"), (False, "inference")):
        analysis.add(mode, [torch.tensor(_expected(k, training)) for k in range(3)])
    summary = analysis.summary()
    stage1 = summary["inference"][0]
    # IoUs 1, 0.818, 0.667, 0.538, 0.333, 0 and six 0s.
    assert stage1["boxes"] == 12
    assert stage1["fraction_above"] == {"0.5": 4 / 12, "0.6": 3 / 12, "0.7": 2 / 12}
    assert sum(stage1["histogram"]) == 12 and stage1["histogram"][0] == 7
    assert stage1["histogram"][-1] == 1  # IoU 1.0 falls in the last bin
    # Stage 3's inputs sit on the GT: more of them above every threshold than stage 1's.
    stage3 = summary["inference"][2]["fraction_above"]
    assert all(stage3[t] > stage1["fraction_above"][t] for t in stage3)
    assert summary["training"][0]["boxes"] == 13

    save(summary, tmp_path / "iou.json", tmp_path / "iou.png", title="known IoUs")
    assert json.loads((tmp_path / "iou.json").read_text())["inference"][0] == stage1
    assert (tmp_path / "iou.png").read_bytes()[:4] == b"\x89PNG"
    table = format_table(summary)
    assert "| all proposals at test time | 1 | 12 | 33.3% | 25.0% | 16.7% |" in table


def test_histogram_bins_are_fixed():
    analysis = IoUAnalysis()
    analysis.add("training", [torch.tensor([0.049, 0.05, 0.51, 0.999])])
    analysis.add("inference", [torch.tensor([0.0])])
    histogram = np.asarray(analysis.summary()["training"][0]["histogram"])
    assert histogram[0] == 1 and histogram[1] == 1 and histogram[10] == 1 and histogram[19] == 1
