#!/usr/bin/env python
"""
What changes the bits of a trained model? Trains the tree-crown cascade for a few iterations
under one setting at a time and prints the sha256 of the final weights of each, next to the
baseline's (the one training writes to final_weights.sha256 in its output folder).

    python experiments/reproducibility.py                 # the demo recipe, 20 iterations each
    python experiments/reproducibility.py --iterations 4  # quicker

The settings: the baseline twice, with another process loading both cores, 1 and 4 torch
threads, torchvision's RoIAlign in place of the parallel one, 0 and 2 data-loader workers.
Writes <output>/reproducibility.md and .json.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from projects.cascade.engine.trainer import read_weights_fingerprint
from runs import REPO, machine, train

CONFIG = "configs/trees/cascade_rcnn_trees.yaml"
KEY = "MODEL.ROI_BOX_CASCADE_HEAD."

# name -> (config overrides, environment, whether a CPU hog runs alongside)
SETTINGS = {
    "baseline": ([], {}, False),
    "baseline, again": ([], {}, False),
    "baseline, both cores loaded by another process": ([], {}, True),
    "1 torch thread (OMP_NUM_THREADS=1)": ([], {"OMP_NUM_THREADS": "1"}, False),
    "4 torch threads (OMP_NUM_THREADS=4)": ([], {"OMP_NUM_THREADS": "4"}, False),
    "torchvision's RoIAlign (PARALLEL_CPU_ROI_ALIGN False)": (
        [KEY + "PARALLEL_CPU_ROI_ALIGN", "False"],
        {},
        False,
    ),
    "0 data-loader workers": (["DATALOADER.NUM_WORKERS", "0"], {}, False),
    "2 data-loader workers": (["DATALOADER.NUM_WORKERS", "2"], {}, False),
}
_HOG = "import time\nwhile True: sum(i * i for i in range(10000))"


def train_hash(overrides, environment, hog, iterations, output_dir):
    """Train with `overrides`; return the weights' fingerprint and the wall time."""
    opts = [*overrides, "SOLVER.MAX_ITER", str(iterations)]
    opts += ["SOLVER.CHECKPOINT_PERIOD", str(iterations), "DATASETS.TEST", "()"]
    hogs = [subprocess.Popen([sys.executable, "-c", _HOG]) for _ in range(2)] if hog else []
    start = time.time()
    try:
        train(CONFIG, opts, output_dir, env={**os.environ, **environment})
    finally:
        for p in hogs:
            p.kill()
    return read_weights_fingerprint(str(output_dir)), time.time() - start


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--output", default=str(REPO / "output" / "reproducibility"))
    args = parser.parse_args()
    output = Path(args.output)

    rows = []
    for name, (overrides, environment, hog) in SETTINGS.items():
        digest, seconds = train_hash(
            overrides, environment, hog, args.iterations, output / f"run{len(rows)}"
        )
        rows.append({"setting": name, "sha256": digest, "seconds": round(seconds, 1)})
        print(json.dumps(rows[-1]), flush=True)

    baseline = rows[0]["sha256"]
    lines = [
        f"{CONFIG}, {args.iterations} iterations; {machine()}",
        "",
        "| setting | weights sha256 (first 16) | same bits as the baseline | wall s |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['setting']} | {r['sha256'][:16]} | {'yes' if r['sha256'] == baseline else 'no'} "
        f"| {r['seconds']} |"
        for r in rows
    ]
    table = "\n".join(lines)
    output.mkdir(parents=True, exist_ok=True)
    (output / "reproducibility.md").write_text(table + "\n")
    (output / "reproducibility.json").write_text(json.dumps(rows, indent=1))
    print(table)


if __name__ == "__main__":
    main()
