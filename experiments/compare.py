#!/usr/bin/env python
"""
Train the two models of a benchmark (Cascade R-CNN and Faster R-CNN, one recipe that differs
only in the ROI heads) on several seeds, and tabulate their results: every run, then the
mean and spread of each model, and of the cascade's lead over Faster R-CNN seed by seed.

    python experiments/compare.py --benchmark trees                 # the demo, seeds 1 2 3
    python experiments/compare.py --benchmark trees --schedule 3x --seeds 1 2
    python experiments/compare.py --benchmark documents

Each run is a plain `train_net.py` call writing to output/<benchmark>/<model>[_3x]_seed<N>/;
a finished run (its final evaluation and its weights' fingerprint are there) is read, not
redone (--retrain forces it). The validation set's numbers are those of training's final
evaluation; the benchmark's other sets are evaluated from the final weights. Seed 1 of the
tree demo is the README's command (a): SEED is 1 in the demo configs. Writes
output/<benchmark>/comparison[_3x].md and .json.
"""

import argparse
import json
from pathlib import Path

from projects.cascade.demo import register_demo
from runs import REPO, evaluate, machine, mean_and_spread, read_run, train

BENCHMARKS = {
    "trees": {
        "metrics": ("AP", "AP50", "AP75", "AP80", "AP90"),
        "val": "trees_val (10 tiles, 223 boxes)",
        "other_sets": (),
        "schedules": {
            "demo": {
                "Cascade R-CNN": "configs/trees/cascade_rcnn_trees.yaml",
                "Faster R-CNN": "configs/trees/faster_rcnn_trees.yaml",
            },
            "3x": {
                "Cascade R-CNN": "configs/trees/cascade_rcnn_trees_3x.yaml",
                "Faster R-CNN": "configs/trees/faster_rcnn_trees_3x.yaml",
            },
        },
    },
    "documents": {
        "metrics": ("AP", "AP50", "AP60", "AP70", "AP75", "AP80", "AP85", "AP90", "AP95"),
        "val": "documents_val",
        "other_sets": ("documents_test",),
        "schedules": {
            "demo": {
                "Cascade R-CNN": "configs/documents/cascade_rcnn_documents.yaml",
                "Faster R-CNN": "configs/documents/faster_rcnn_documents.yaml",
            },
        },
    },
}


def run_dir(benchmark: str, config: str, seed: int) -> Path:
    name = Path(config).stem.replace(f"_{benchmark}", "")
    return REPO / "output" / benchmark / f"{name}_seed{seed}"


def table(title, runs, models, seeds, metrics):
    """The runs, each model's mean and spread, and the cascade's lead seed by seed."""
    lines = [
        title,
        "",
        "| model | seed | iterations | " + " | ".join(metrics) + " | weights sha256 |",
        "|---|---|---|" + "---|" * len(metrics) + "---|",
    ]
    lines += [
        f"| {r['model']} | {r['seed']} | {r['iterations']} | "
        + " | ".join(f"{r[m]:.1f}" for m in metrics)
        + f" | `{r['sha256'][:16]}` |"
        for r in runs
    ]
    lines += ["", "| model | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for name in models:
        own = [r for r in runs if r["model"] == name]
        cells = [mean_and_spread([r[m] for r in own]) for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    by_seed = {(r["model"], r["seed"]): r for r in runs}
    leads = {
        m: [by_seed[models[0], s][m] - by_seed[models[1], s][m] for s in seeds] for m in metrics
    }
    lines.append(
        "| lead of the cascade, seed by seed | "
        + " | ".join(mean_and_spread(leads[m]) for m in metrics)
        + " |"
    )
    return "\n".join(lines), leads


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--benchmark", choices=list(BENCHMARKS), default="trees")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--schedule", default="demo", help="demo, or 3x for the trees")
    parser.add_argument("--retrain", action="store_true", help="train even if results exist")
    args = parser.parse_args(argv)
    benchmark = BENCHMARKS[args.benchmark]
    if args.schedule not in benchmark["schedules"]:
        parser.error(f"--schedule: {args.benchmark} has {', '.join(benchmark['schedules'])}")
    configs = benchmark["schedules"][args.schedule]
    metrics = benchmark["metrics"]
    register_demo()

    runs = []
    for seed in args.seeds:
        for name, config in configs.items():
            out_dir = run_dir(args.benchmark, config, seed)
            if args.retrain or read_run(out_dir, metrics) is None:
                train(config, ["SEED", str(seed)], out_dir)
            result = read_run(out_dir, metrics)
            row = {"model": name, "seed": seed, "set": "val", **result}
            runs.append(row)
            for dataset in benchmark["other_sets"]:
                weights = out_dir / "model_final.pth"
                scores = evaluate(config, [], weights, dataset, metrics)
                runs.append({**row, "set": dataset, **scores})

    suffix = "" if args.schedule == "demo" else f"_{args.schedule}"
    sets = {"val": benchmark["val"], **{d: d for d in benchmark["other_sets"]}}
    parts, leads = [], {}
    for key, title in sets.items():
        text, leads[key] = table(
            f"{title}, schedule {args.schedule}; {machine()}",
            [r for r in runs if r["set"] == key],
            list(configs),
            args.seeds,
            metrics,
        )
        parts.append(text)
    output = REPO / "output" / args.benchmark
    text = "\n\n".join(parts)
    print(text)
    (output / f"comparison{suffix}.md").write_text(text + "\n")
    (output / f"comparison{suffix}.json").write_text(
        json.dumps({"runs": runs, "leads": leads}, indent=1)
    )


if __name__ == "__main__":
    main()
