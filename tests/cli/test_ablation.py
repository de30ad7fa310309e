"""
experiments/ablation_trees.py --quick end to end: trains each chosen variant, evaluates every
TEST_SCORE x TEST_STAGE, writes the table.
"""

import json
import subprocess
import sys

import pytest
import yaml

from tests.helpers import REPO


@pytest.mark.e2e
def test_quick_ablation_writes_the_tables(trees_prepared, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "experiments/ablation_trees.py",
            "--quick",
            "--output",
            str(tmp_path),
            "--variants",
            "faster_rcnn",
            "cascade_2_stages",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    # Each variant was trained with its own config: the 2-stage cascade really has 2 stages.
    trained = yaml.safe_load((tmp_path / "cascade_2_stages_seed1" / "config.yaml").read_text())
    assert trained["MODEL"]["ROI_BOX_CASCADE_HEAD"]["IOUS"] == [0.5, 0.6]
    assert trained["SOLVER"]["MAX_ITER"] == 2 and trained["SEED"] == 1
    faster = yaml.safe_load((tmp_path / "faster_rcnn_seed1" / "config.yaml").read_text())
    assert faster["MODEL"]["ROI_HEADS"]["NAME"] == "StandardROIHeads"

    results = json.loads((tmp_path / "ablation.json").read_text())
    assert [r["variant"] for r in results["trained"]] == ["Faster R-CNN", "2 stages (0.5, 0.6)"]
    for row in results["trained"]:
        for split in ("trees_val", "trees_test"):
            assert set(row[split]) == {"AP", "AP50", "AP75", "AP90"}
            assert all(0 <= v <= 100 for v in row[split].values())
    # Only the cascade gets test-time variants: 3 TEST_SCOREs x 2 stages.
    settings = [(r["TEST_SCORE"], r["TEST_STAGE"]) for r in results["test_time"]]
    assert sorted(settings) == sorted(
        (s, k) for s in ("mean", "mean_logits", "mean_on_final", "last") for k in (1, 2)
    )
    # With one stage, every scoring mode is that stage's own softmax.
    by = {(r["TEST_SCORE"], r["TEST_STAGE"]): r["trees_val"] for r in results["test_time"]}
    assert by[("mean", 1)] == by[("last", 1)] == by[("mean_logits", 1)]

    table = (tmp_path / "ablation.md").read_text()
    assert "| Faster R-CNN |" in table and "| 2 stages (0.5, 0.6) | mean_on_final | 2 |" in table
