#!/usr/bin/env python
"""
Train the two tree-crown demo models (cascade and Faster R-CNN, same recipe) on
several seeds and print one table of their trees_val results.

    python experiments/compare_trees.py --seeds 1 2

Each run is a plain `train_net.py` call writing to output/trees/<model>_seed<N>/.
A run whose metrics.json already holds its final evaluation is read, not redone
(--retrain forces it). The table goes to stdout and to output/trees/comparison.md.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = {
    "Cascade R-CNN": "configs/trees/cascade_rcnn_trees.yaml",
    "Faster R-CNN": "configs/trees/faster_rcnn_trees.yaml",
}


def run_dir(config, seed):
    return REPO / "output" / "trees" / f"{Path(config).stem.replace('_trees', '')}_seed{seed}"


def read_metrics(out_dir):
    """Return (final bbox metrics, median s/iter, total iterations) from metrics.json, or None."""
    path = out_dir / "metrics.json"
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    evals = [r for r in rows if "bbox/AP" in r]
    if not evals:
        return None
    train_rows = [r for r in rows if "time" in r]
    seconds = statistics.median(r["time"] for r in train_rows)
    return evals[-1], seconds, train_rows[-1]["iteration"] + 1


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def train(config, seed, out_dir):
    cmd = [sys.executable, "train_net.py", "--config-file", config, "SEED", str(seed),
           "OUTPUT_DIR", str(out_dir)]
    print("+", " ".join(cmd), flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir.with_suffix(".log"), "w") as log:
        subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--retrain", action="store_true", help="train even if results exist")
    args = parser.parse_args()

    rows = []
    for seed in args.seeds:
        for name, config in MODELS.items():
            out_dir = run_dir(config, seed)
            if args.retrain or read_metrics(out_dir) is None:
                train(config, seed, out_dir)
            result = read_metrics(out_dir)
            if result is None:
                sys.exit(f"{out_dir}/metrics.json has no final bbox evaluation; see {out_dir}.log")
            rows.append((name, seed, *result))

    lines = [
        f"trees_val (10 tiles, 223 boxes); {cpu_name()}, {os.cpu_count()} CPU cores",
        "",
        "| model | seed | iterations | AP | AP50 | AP75 | s/iter (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, seed, m, sec, iters in rows:
        lines.append(
            f"| {name} | {seed} | {iters} | {m['bbox/AP']:.1f} | {m['bbox/AP50']:.1f} | "
            f"{m['bbox/AP75']:.1f} | {sec:.2f} |"
        )
    table = "\n".join(lines)
    print(table)
    (REPO / "output" / "trees" / "comparison.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
