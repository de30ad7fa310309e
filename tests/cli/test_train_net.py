"""
train_net.py end to end through its command line: a few iterations on the real trees, then
evaluation; a bad config key stops it with one line.
"""

import json

import pytest

from tests.helpers import TINY_CONFIG, run

pytestmark = pytest.mark.e2e


def test_train_then_eval_only(tmp_path, trees_prepared):
    common = [
        "DATASETS.TEST",
        "('trees_test',)",
        "DATALOADER.NUM_WORKERS",
        "0",
        "OUTPUT_DIR",
        str(tmp_path),
    ]
    log = run(
        *common, "SOLVER.MAX_ITER", "4", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "2"
    )
    assert "copypaste: AP,AP50,AP75" in log
    assert (tmp_path / "model_final.pth").exists()
    assert list(tmp_path.glob("events.out.tfevents.*")), "no TensorBoard events"
    rows = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    training = [r for r in rows if "total_loss" in r]
    assert training[-1]["iteration"] == 3  # 4 iterations, counted from 0
    assert "loss_box_reg_stage2" in training[0] and "bbox/AP75" in rows[-1]
    trained_ap = rows[-1]["bbox/AP"]

    log = run("--eval-only", *common, "MODEL.WEIGHTS", str(tmp_path / "model_final.pth"))
    line = log.split("copypaste: AP,AP50,AP75,APs,APm,APl")[1].splitlines()[1]
    # copypaste prints 4 decimals
    assert float(line.split("copypaste: ")[1].split(",")[0]) == round(trained_ap, 4)

    # Test-time augmentation: a second evaluation after the plain one; its results are the
    # task "bbox_TTA", which TEST.EXPECTED_RESULTS can check.
    log = run(
        "--eval-only",
        *common,
        "MODEL.WEIGHTS",
        str(tmp_path / "model_final.pth"),
        "TEST.AUG.ENABLED",
        "True",
        "TEST.AUG.MIN_SIZES",
        "(320, 400)",
        "TEST.AUG.MAX_SIZE",
        "500",
        "MODEL.ROI_BOX_CASCADE_HEAD.TEST_NMS_METHOD",
        "linear",
        "TEST.EXPECTED_RESULTS",
        "[['bbox_TTA', 'AP60', 50.0, 50.0]]",
    )
    assert "Running inference with test-time augmentation" in log
    assert log.count("copypaste: AP,AP50,AP75") == 2
    assert "TEST.EXPECTED_RESULTS: all 1 checks passed." in log
    assert (tmp_path / "inference_TTA" / "trees_test" / "coco_instances_results.json").exists()


def test_bad_cascade_key_is_one_line_naming_it(tmp_path):
    output = run(
        "MODEL.ROI_BOX_CASCADE_HEAD.IOUS", "[0.5, 0.6]", "OUTPUT_DIR", tmp_path, expect_ok=False
    )
    assert output.strip().splitlines()[-1] == (
        f"error: {TINY_CONFIG}: MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS has 3 entries but "
        "MODEL.ROI_BOX_CASCADE_HEAD.IOUS has 2: give one entry per stage."
    )
    assert "Traceback" not in output
