"""
train_net.py's evaluation from its command line: the per-stage table in periodic evaluation
and in a two-process --eval-only, and TEST.EXPECTED_RESULTS; tools/stage_quality.py on the
trained model.
"""

import json
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO, TINY_CONFIG, env, metrics, rendezvous, run

pytestmark = pytest.mark.e2e

TEST_SET = ["DATASETS.TEST", "('trees_test',)"]
STAGE_EVAL = ["TEST.CASCADE_STAGE_EVAL", "True"]
ROWS = ["1", "2", "3", "1~2", "1~3"]


def _table(output_dir):
    return json.loads((output_dir / "inference" / "trees_test" / "cascade_stages.json").read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory, trees_prepared):
    """A few iterations of the tiny recipe; its final evaluation has the per-stage table."""
    output_dir = tmp_path_factory.mktemp("trained")
    log = run(*TEST_SET, *STAGE_EVAL, "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", output_dir)
    return output_dir, log


def test_periodic_evaluation_stores_the_stage_table(trained):
    output_dir, log = trained
    last = metrics(output_dir)[-1]
    for row in ROWS:
        for column in ("AP", "AP50", "AP60", "AP70", "AP75", "AP80", "AP90"):
            assert f"cascade_stages/{row}/{column}" in last
    assert "bbox/AP90" in last  # the main evaluation reports the strict IoUs too
    assert last["cascade_stages/1~3/AP"] == pytest.approx(last["bbox/AP"], abs=1e-9)
    assert list(_table(output_dir)["rows"]) == ROWS
    markdown = (output_dir / "inference" / "trees_test" / "cascade_stages.md").read_text()
    assert "| stages   |   AP |   AP50 |" in markdown
    assert "Cascade stages on trees_test" in log and "| 1~3      |" in log


def test_two_process_eval_only_matches_and_passes_expected_results(trained, tmp_path):
    output_dir, _ = trained
    last = metrics(output_dir)[-1]
    expected = [
        ["bbox", "AP50", last["bbox/AP50"], 0.01],
        ["cascade_stages", "2/AP50", last["cascade_stages/2/AP50"], 0.01],
    ]
    log = run(
        "--eval-only",
        "--num-gpus",
        "2",
        "--dist-url",
        rendezvous(tmp_path),
        *TEST_SET,
        *STAGE_EVAL,
        "MODEL.DEVICE",
        "cpu",
        "MODEL.WEIGHTS",
        output_dir / "model_final.pth",
        "TEST.EXPECTED_RESULTS",
        repr(expected),
        "OUTPUT_DIR",
        tmp_path,
    )
    assert "TEST.EXPECTED_RESULTS: all 2 checks passed." in log
    # Both ranks evaluated one of the two images; rank 0 gathered them.
    single, gathered = _table(output_dir)["rows"], _table(tmp_path)["rows"]
    for row in ROWS:
        assert single[row] == pytest.approx(gathered[row], abs=1e-4, nan_ok=True), row


def test_eval_only_fails_on_results_off_their_expected_value(trained, tmp_path):
    output_dir, _ = trained
    expected = [
        ["bbox", "AP", 99.0, 0.5],
        ["segm", "AP", 40.0, 0.5],
        ["bbox", "AP99", 40.0, 0.5],
        ["bbox", "AP50", 0.0, 100.0],  # passes
    ]
    log = run(
        "--eval-only",
        *TEST_SET,
        "MODEL.WEIGHTS",
        output_dir / "model_final.pth",
        "TEST.EXPECTED_RESULTS",
        repr(expected),
        "OUTPUT_DIR",
        tmp_path,
        expect_ok=False,
    )
    actual_ap = metrics(output_dir)[-1]["bbox/AP"]
    assert "error: TEST.EXPECTED_RESULTS: 3 of 4 checks failed:" in log
    assert f"bbox/AP: expected 99.0 +- 0.5, actual {actual_ap:.4f}" in log
    assert "segm/AP: no task 'segm' in the results; tasks: bbox" in log
    assert re.search(r"bbox/AP99: task 'bbox' has no metric 'AP99'; metrics: AP, AP50, ", log)
    assert "bbox/AP50" not in log.split("checks failed:")[1]
    assert "Traceback" not in log


def test_stage_quality_tool_on_the_trained_model(trained, tmp_path):
    output_dir, _ = trained
    proc = subprocess.run(
        [
            sys.executable,
            "tools/stage_quality.py",
            "--config-file",
            TINY_CONFIG,
            "--dataset",
            "trees_test",
            "--output",
            str(tmp_path),
            "MODEL.WEIGHTS",
            str(output_dir / "model_final.pth"),
        ],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((tmp_path / "stage_quality.json").read_text())
    assert summary["images"] == 2 and len(summary["localization"]) == 3
    assert list(summary["detection"]) == ["1", "2", "3", "model"]
    # The model's AP50 is the one train_net's evaluation of the same weights printed.
    model_ap50 = summary["detection"]["model"][0]
    assert model_ap50 == pytest.approx(metrics(output_dir)[-1]["bbox/AP50"], abs=1e-6)
    assert (tmp_path / "stage_quality.png").read_bytes()[:4] == b"\x89PNG"
    assert "| input IoU | stage 1: boxes, mean output IoU |" in proc.stdout
