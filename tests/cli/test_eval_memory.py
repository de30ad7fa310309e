"""Evaluating many images keeps memory flat, apart from the detections the evaluator stores."""

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO, env


@pytest.mark.e2e
def test_evaluation_memory_stays_flat(tmp_path, trees_prepared):
    proc = subprocess.run(
        [
            sys.executable,
            "benchmarks/eval_memory.py",
            "--output",
            str(tmp_path),
            "--num-images",
            "150",
            "--crop-size",
            "128",
            "--every",
            "25",
            "MODEL.FPN.OUT_CHANNELS",
            "32",
            "MODEL.ROI_BOX_HEAD.FC_DIM",
            "64",
            "MODEL.RPN.POST_NMS_TOPK_TEST",
            "100",
        ],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((tmp_path / "memory.json").read_text())
    assert report["images"] == 150 == len(list((tmp_path / "images").glob("crop_*.png")))
    assert report["stored_detections"] > 150, "the evaluator should hold detections"

    # From image 25 on (allocator and thread pools warmed up), RSS may grow by what the
    # stored detections take, plus a few MiB of allocator noise: not by ~0.2 MiB per
    # image, which keeping one input image alive would cost.
    warm, last = report["samples"][1], report["samples"][-1]
    assert warm["images"] == 25 and last["images"] == 150
    growth = last["rss_mb"] - warm["rss_mb"]
    stored = last["detections_mb"] - warm["detections_mb"]
    assert growth < stored + 10, report["samples"]
