#!/usr/bin/env python
"""
What changes the bits of a trained model? Trains the tree-crown cascade for a few iterations
under one setting at a time and prints the sha256 of the final weights of each, next to the
baseline's (train_net.py prints the same hash after training: "Weights of rank 0 after
training: sha256 ...").

    python experiments/reproducibility.py                 # the demo recipe, 20 iterations each
    python experiments/reproducibility.py --iterations 4  # quicker

The settings: the baseline twice, with another process loading both cores, 1 and 4 torch
threads, torchvision's RoIAlign in place of the parallel one, 0 and 2 data-loader workers.
Writes <output>/reproducibility.md and .json.
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
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


def train(overrides, environment, hog, iterations, output_dir):
    """Run train_net.py; return the logged weights hash and the wall time."""
    cmd = [
        sys.executable,
        "train_net.py",
        "--config-file",
        CONFIG,
        *overrides,
        "SOLVER.MAX_ITER",
        str(iterations),
        "SOLVER.CHECKPOINT_PERIOD",
        str(iterations),
        "DATASETS.TEST",
        "()",
        "OUTPUT_DIR",
        str(output_dir),
    ]
    hogs = [subprocess.Popen([sys.executable, "-c", _HOG]) for _ in range(2)] if hog else []
    start = time.time()
    try:
        proc = subprocess.run(
            cmd, cwd=REPO, env={**os.environ, **environment}, capture_output=True, text=True
        )
    finally:
        for p in hogs:
            p.kill()
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    found = re.findall(r"after training: sha256 ([0-9a-f]{64})", proc.stdout + proc.stderr)
    return found[-1], time.time() - start


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
        digest, seconds = train(
            overrides, environment, hog, args.iterations, output / f"run{len(rows)}"
        )
        rows.append({"setting": name, "sha256": digest, "seconds": round(seconds, 1)})
        print(json.dumps(rows[-1]), flush=True)

    baseline = rows[0]["sha256"]
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    lines = [
        f"{CONFIG}, {args.iterations} iterations; {cpu}, {os.cpu_count()} cores",
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
