#!/usr/bin/env python
"""
Train the two tree-crown demo models (cascade and Faster R-CNN, same recipe) on several
seeds and tabulate their trees_val results: every run, then the mean and spread of each
model, and of the cascade's lead over Faster R-CNN seed by seed.

    python experiments/compare_trees.py                    # the demo, seeds 1 2 3
    python experiments/compare_trees.py --schedule 3x --seeds 1 2

Each run is a plain `train_net.py` call writing to output/trees/<model>[_3x]_seed<N>/; a run
whose metrics.json holds its final evaluation is read, not redone (--retrain forces it).
Seed 1 of the demo is the README's command (a): SEED is 1 in the demo configs. Writes
output/trees/comparison[_3x].md and .json.
"""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCHEDULES = {
    "demo": {
        "Cascade R-CNN": "configs/trees/cascade_rcnn_trees.yaml",
        "Faster R-CNN": "configs/trees/faster_rcnn_trees.yaml",
    },
    "3x": {
        "Cascade R-CNN": "configs/trees/cascade_rcnn_trees_3x.yaml",
        "Faster R-CNN": "configs/trees/faster_rcnn_trees_3x.yaml",
    },
}
METRICS = ("AP", "AP50", "AP75", "AP80", "AP90")


def run_dir(config, seed):
    return REPO / "output" / "trees" / f"{Path(config).stem.replace('_trees', '')}_seed{seed}"


def read_run(out_dir):
    """(final bbox metrics, iterations, weights sha256) of a finished run, or None."""
    path = out_dir / "metrics.json"
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    evals = [r for r in rows if "bbox/AP" in r]
    if not evals:
        return None
    found = re.findall(r"after training: sha256 ([0-9a-f]{64})", (out_dir / "log.txt").read_text())
    iterations = max(r["iteration"] for r in rows if "total_loss" in r) + 1
    return {m: evals[-1][f"bbox/{m}"] for m in METRICS}, iterations, found[-1]


def cpu_name():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def train(config, seed, out_dir):
    cmd = [
        sys.executable,
        "train_net.py",
        "--config-file",
        config,
        "SEED",
        str(seed),
        "OUTPUT_DIR",
        str(out_dir),
    ]
    print("+", " ".join(cmd), flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir.with_suffix(".log"), "w") as log:
        subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)


def mean_and_spread(values):
    """'mean ± sample standard deviation (min to max)'."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {spread:.1f} ({min(values):.1f} to {max(values):.1f})"


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--schedule", choices=list(SCHEDULES), default="demo")
    parser.add_argument("--retrain", action="store_true", help="train even if results exist")
    args = parser.parse_args()

    runs = []
    for seed in args.seeds:
        for name, config in SCHEDULES[args.schedule].items():
            out_dir = run_dir(config, seed)
            if args.retrain or read_run(out_dir) is None:
                train(config, seed, out_dir)
            result = read_run(out_dir)
            if result is None:
                sys.exit(f"{out_dir}/metrics.json has no final bbox evaluation; see {out_dir}.log")
            metrics, iterations, sha256 = result
            runs.append(
                {"model": name, "seed": seed, "iterations": iterations, "sha256": sha256, **metrics}
            )

    models = list(SCHEDULES[args.schedule])
    lines = [
        f"trees_val (10 tiles, 223 boxes), schedule {args.schedule}; {cpu_name()}, "
        f"{os.cpu_count()} CPU cores",
        "",
        "| model | seed | iterations | " + " | ".join(METRICS) + " | weights sha256 |",
        "|---|---|---|" + "---|" * len(METRICS) + "---|",
    ]
    lines += [
        f"| {r['model']} | {r['seed']} | {r['iterations']} | "
        + " | ".join(f"{r[m]:.1f}" for m in METRICS)
        + f" | `{r['sha256'][:16]}` |"
        for r in runs
    ]
    lines += ["", "| model | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for name in models:
        own = [r for r in runs if r["model"] == name]
        lines.append(
            f"| {name} | "
            + " | ".join(mean_and_spread([r[m] for r in own]) for m in METRICS)
            + " |"
        )
    by_seed = {(r["model"], r["seed"]): r for r in runs}
    leads = {
        m: [by_seed[models[0], s][m] - by_seed[models[1], s][m] for s in args.seeds]
        for m in METRICS
    }
    lines.append(
        "| lead of the cascade, seed by seed | "
        + " | ".join(mean_and_spread(leads[m]) for m in METRICS)
        + " |"
    )
    table = "\n".join(lines)
    print(table)
    suffix = "" if args.schedule == "demo" else f"_{args.schedule}"
    (REPO / "output" / "trees" / f"comparison{suffix}.md").write_text(table + "\n")
    (REPO / "output" / "trees" / f"comparison{suffix}.json").write_text(
        json.dumps({"runs": runs, "leads": leads}, indent=1)
    )


if __name__ == "__main__":
    main()
