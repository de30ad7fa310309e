"""Running train_net.py from tests: a tiny tree-crown recipe, and helpers to read its outputs."""
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import torch

from projects.cascade.engine.trainer import weights_fingerprint

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/trees/cascade_rcnn_trees.yaml"

# The demo recipe shrunk to a few seconds per run: 128-160 px inputs, narrow heads.
TINY = [
    "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.WARMUP_ITERS", "1",
    "INPUT.MIN_SIZE_TRAIN", "(128,)",
    "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "160",
    "INPUT.MAX_SIZE_TEST", "160",
    "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "100",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    "DATASETS.TEST", "()",
]


def env():
    """One thread per process: the same arithmetic in every run, and no oversubscription."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def command(*args):
    return [sys.executable, "train_net.py", "--config-file", CONFIG, *map(str, args)]


def run(*args, expect_ok=True, extra_env=None, timeout=600):
    """Run train_net.py; return its combined output. Fails the test on an unexpected exit code."""
    proc = subprocess.run(
        command(*args), cwd=REPO, env={**env(), **(extra_env or {})},
        capture_output=True, text=True, timeout=timeout,
    )
    output = proc.stdout + proc.stderr
    assert (proc.returncode == 0) == expect_ok, f"exit code {proc.returncode}\n{output[-4000:]}"
    return output


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def logged_fingerprint(log_file):
    """The weights fingerprint a rank logged after training."""
    found = re.findall(r"after training: sha256 ([0-9a-f]{64})", Path(log_file).read_text())
    assert len(found) == 1, f"{log_file}: {found}"
    return found[0]


def checkpoint_fingerprint(path):
    return weights_fingerprint(torch.load(path, map_location="cpu", weights_only=True)["model"])


def metrics(output_dir):
    lines = (Path(output_dir) / "metrics.json").read_text().splitlines()
    return [json.loads(line) for line in lines]


def copypaste_bbox(output):
    """The bbox metrics line detectron2 prints as `copypaste: AP,AP50,...`."""
    rows = re.findall(r"copypaste: AP,AP50,AP75,APs,APm,APl\S*\n.*copypaste: (\S+)", output)
    assert len(rows) == 1, rows
    return rows[0]
