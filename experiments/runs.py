"""
What the experiments share: training runs as plain `train_net.py` commands, reading a finished
run (its final evaluation and its weights' fingerprint), evaluating weights on a dataset, and
the machine and spread lines of their tables.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from detectron2.data import build_detection_test_loader
from detectron2.evaluation import inference_on_dataset

from projects.cascade.config_loader import load_config
from projects.cascade.demo import register_demo
from projects.cascade.engine.predictor import build_trained_model
from projects.cascade.engine.trainer import FINGERPRINT_FILE, read_weights_fingerprint
from projects.cascade.evaluation import COCOEvaluatorAtIoUs

REPO = Path(__file__).resolve().parents[1]


def train(config: str, opts: Sequence[str], out_dir: Path, env: Optional[dict] = None) -> None:
    """`train_net.py --config-file config opts OUTPUT_DIR out_dir`, logged to out_dir.log."""
    cmd = [sys.executable, "train_net.py", "--config-file", config, *opts]
    cmd += ["OUTPUT_DIR", str(out_dir)]
    print("+", " ".join(cmd), flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir.with_suffix(".log"), "w") as log:
        proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode:
        sys.exit(f"training failed ({' '.join(cmd)}): see {out_dir.with_suffix('.log')}")


def metrics_rows(out_dir: Path) -> List[dict]:
    path = out_dir / "metrics.json"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_run(out_dir: Path, metrics: Sequence[str]) -> Optional[dict]:
    """
    A finished run's final bbox `metrics`, its iterations, median s/iter and weights'
    fingerprint; None if the run has not finished.
    """
    rows = metrics_rows(out_dir)
    evals = [r for r in rows if "bbox/AP" in r]
    if not evals or not (out_dir / FINGERPRINT_FILE).exists():
        return None
    times = [r["time"] for r in rows if "time" in r]
    return {
        **{m: evals[-1][f"bbox/{m}"] for m in metrics},
        "iterations": max(r["iteration"] for r in rows if "total_loss" in r) + 1,
        # detectron2 starts timing after a few iterations; short runs may have none.
        "s_per_iter": statistics.median(times) if times else float("nan"),
        "sha256": read_weights_fingerprint(str(out_dir)),
    }


def evaluate(
    config: str, opts: Sequence[str], weights, dataset: str, metrics: Sequence[str], wrap=None
) -> Dict[str, float]:
    """
    The bbox `metrics` on `dataset` of the model of `config` with `opts` and `weights`
    (read safely), optionally wrapped by `wrap(model, cfg)` (test-time augmentation).
    """
    register_demo()
    opts = [*opts, "MODEL.WEIGHTS", str(weights), "MODEL.DEVICE", "cpu"]
    cfg = load_config(str(REPO / config), opts)
    model = build_trained_model(cfg)
    if wrap is not None:
        model = wrap(model, cfg)
    loader = build_detection_test_loader(cfg, dataset)
    with torch.no_grad():
        result = inference_on_dataset(model, loader, COCOEvaluatorAtIoUs(dataset))
    return {m: result["bbox"][m] for m in metrics}


def machine() -> str:
    """The CPU's name and core count, for the line above a table."""
    name = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            name = line.split(":", 1)[1].strip()
            break
    return f"{name}, {os.cpu_count()} CPU cores"


def mean_and_spread(values: Sequence[float]) -> str:
    """'mean ± sample standard deviation (min to max)'; one value: the value alone."""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    spread = statistics.stdev(values)
    return f"{statistics.mean(values):.1f} ± {spread:.1f} ({min(values):.1f} to {max(values):.1f})"
