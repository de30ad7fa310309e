#!/usr/bin/env python
"""
Speed, memory, parameters and FLOPs of the cascade's ROI heads, all in one process:

- ours: `CascadeRCNNROIHeads` (this project);
- builtin: detectron2's `CascadeROIHeads`, with the same weights as ours;
- faster: Faster R-CNN's `StandardROIHeads`, with the same backbone and RPN;
- ours_tv (main rows only): ours with PARALLEL_CPU_ROI_ALIGN False, i.e. torchvision's
  single-threaded RoIAlign as the other two use, to show what the parallel kernel adds.

Every time is the median of paired repetitions (ours, builtin, faster, then the reverse
order, ...) after warm-up, on the CPU with 2 threads; each ratio is the median of the
per-repetition ratios, so that load shared with other processes cancels out.

    .venv/bin/python benchmarks/benchmark_cascade.py            # full run, several minutes
    .venv/bin/python benchmarks/benchmark_cascade.py --quick    # tiny sizes, for the tests

It prints Markdown tables and writes them as JSON (--output).

The modules next to this file hold the parts: harness.py measures, compared_models.py
builds the models, workloads.py their inputs and timed steps, r50_setup.py, trees_setup.py,
pruning_grid.py and fvcore_counts.py the sections, report.py the JSON file and the tables.
"""

import argparse
import time
from pathlib import Path

import torch

from detectron2.utils.logger import setup_logger

from harness import machine
from projects.cascade.demo import register_demo
from pruning_grid import run_prune_trees
from r50_setup import run_r50
from report import ResultsFile, markdown
from trees_setup import TREES_CONFIGS, run_trees, run_trees_train, trees_models
from workloads import tree_inputs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions")
    parser.add_argument("--output", default="output/benchmarks/results.json")
    parser.add_argument(
        "--reps", type=int, help="paired repetitions of the R50 setup (default 10, quick 2)"
    )
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--only",
        choices=("r50", "trees", "trees-train", "trees-prune"),
        help="run one setup, or only the trees' training iterations or pruning",
    )
    parser.add_argument(
        "--train-reps", type=int, help="paired training iterations of the trees setup (default 20)"
    )
    parser.add_argument(
        "--prune-reps",
        type=int,
        help="paired inference repetitions of the pruning table (default 30)",
    )
    parser.add_argument(
        "--cascade-weights", default="output/trees/cascade_rcnn_seed1/model_final.pth"
    )
    parser.add_argument(
        "--faster-weights", default="output/trees/faster_rcnn_seed1/model_final.pth"
    )
    args = parser.parse_args(argv)
    args.reps = args.reps or (2 if args.quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    # The trees setup's inference and ROI-head steps take 0.1-0.3 s: many more pairs
    # narrow the ratios' spread at little cost.
    args.fast_reps = 2 if args.quick else 30
    args.scaling_reps = 2 if args.quick else 20
    args.train_reps = args.train_reps or (2 if args.quick else 20)
    args.prune_reps = args.prune_reps or args.fast_reps
    args.mem_reps = 1 if args.quick else 5

    setup_logger(name="detectron2", abbrev_name="d2").setLevel("WARNING")
    register_demo()
    torch.set_num_threads(args.threads)
    out = Path(args.output)
    results = ResultsFile(out, machine=machine(), quick=args.quick, reps=args.reps)
    start = time.perf_counter()
    if args.only in (None, "r50"):
        run_r50(args, results)
    if args.only in (None, "trees"):
        run_trees(args, results)
    if args.only == "trees-train":
        run_trees_train(args, results, *trees_models(args, results))
    if args.only == "trees-prune":
        cfgs, models = trees_models(args, results)
        inputs = tree_inputs(cfgs["ours"], "trees_val", 2 if args.quick else 10, is_train=False)
        run_prune_trees(args, results, cfgs["ours"], TREES_CONFIGS["ours"], models, inputs)
    results.finish(markdown, start)
    return results


if __name__ == "__main__":
    main()
