"""
Distributed training without GPUs: train_net.py as two gloo processes on one machine,
and as two "machines" on localhost launched the way the README's SLURM recipe does.
"""

import json
import math
import subprocess
import sys

import pytest

from projects.cascade.engine.trainer import read_weights_fingerprint
from tests.helpers import (
    REPO,
    checkpoint_fingerprint,
    copypaste_bbox,
    env,
    free_port,
    logged_fingerprint,
    metrics,
    run,
)

pytestmark = pytest.mark.e2e


# The README's multi-machine line; SLURM sets the first two variables on every node.
SLURM_COMMAND = (
    '"$PYTHON" train_net.py --config-file configs/trees/cascade_rcnn_trees_tiny.yaml --num-gpus 1 '
    '--num-machines "$SLURM_JOB_NUM_NODES" --machine-rank "$SLURM_NODEID" '
    '--dist-url "tcp://$MASTER_ADDR:$MASTER_PORT" "$@"'
)


def _detections(output_dir):
    path = output_dir / "inference" / "trees_val" / "coco_instances_results.json"
    dets = json.loads(path.read_text())
    return sorted(dets, key=lambda d: (d["image_id"], -d["score"], d["bbox"]))


def test_two_cpu_processes_train_in_step_and_evaluate_like_one(tmp_path, trees_prepared):
    ddp = tmp_path / "ddp"
    log = run(
        "--num-gpus",
        "2",
        "--dist-url",
        "auto",
        "MODEL.DEVICE",
        "cpu",
        "SOLVER.MAX_ITER",
        "3",
        "SOLVER.CHECKPOINT_PERIOD",
        "100",
        "DATASETS.TEST",
        "('trees_val',)",
        "OUTPUT_DIR",
        ddp,
    )
    assert "World size: 2" in (ddp / "log.txt").read_text()
    # Both ranks end with the weights rank 0 saved.
    final = checkpoint_fingerprint(ddp / "model_final.pth")
    assert read_weights_fingerprint(ddp) == final
    assert logged_fingerprint(ddp / "log.txt.rank1") == final  # rank 1 logs its own
    rows = [r for r in metrics(ddp) if "total_loss" in r]
    assert rows and all(math.isfinite(r["total_loss"]) for r in rows)
    assert rows[-1]["iteration"] == 2

    # The final evaluation ran on both ranks (5 of the 10 images each); one process
    # evaluating the same checkpoint must find the same detections and metrics.
    single = tmp_path / "single"
    single_log = run(
        "--eval-only",
        "MODEL.WEIGHTS",
        ddp / "model_final.pth",
        "DATASETS.TEST",
        "('trees_val',)",
        "OUTPUT_DIR",
        single,
    )
    assert copypaste_bbox(single_log) == copypaste_bbox(log)
    two, one = _detections(ddp), _detections(single)
    assert len(two) == len(one) > 0
    assert len({d["image_id"] for d in one}) > 5, "rank 1's half of the images is missing"
    for a, b in zip(two, one):
        assert a["image_id"] == b["image_id"] and a["category_id"] == b["category_id"]
        assert abs(a["score"] - b["score"]) < 1e-5
        assert all(abs(x - y) < 1e-3 for x, y in zip(a["bbox"], b["bbox"]))


def test_two_machines_on_localhost_slurm_style(tmp_path, trees_prepared):
    """The README's multi-machine command, with the variables SLURM sets on each node."""
    port = free_port()
    procs = []
    for node in (0, 1):
        node_env = {
            **env(),
            "SLURM_JOB_NUM_NODES": "2",
            "SLURM_NODEID": str(node),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "PYTHON": sys.executable,
        }
        # Each "machine" writes to its own folder, as on separate disks.
        opts = [
            "MODEL.DEVICE",
            "cpu",
            "SOLVER.MAX_ITER",
            "2",
            "OUTPUT_DIR",
            str(tmp_path / f"node{node}"),
        ]
        procs.append(
            subprocess.Popen(
                ["bash", "-c", SLURM_COMMAND, "bash", *opts],
                cwd=REPO,
                env=node_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-4000:]

    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    assert "World size: 2" in (node0 / "log.txt").read_text()
    assert "Rank of current process: 1. World size: 2" in (node1 / "log.txt.rank1").read_text()
    final = checkpoint_fingerprint(node0 / "model_final.pth")
    assert read_weights_fingerprint(node0) == final
    assert logged_fingerprint(node1 / "log.txt.rank1") == final
    assert not list(node1.glob("*.pth")), "only rank 0 writes checkpoints"
