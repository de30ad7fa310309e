#!/usr/bin/env python
"""
Soak: train a tiny Cascade R-CNN for many iterations, then call it for many inferences,
and report whether the memory and the time per step stay flat.

    .venv/bin/python benchmarks/soak.py                          # 2000 + 2000 steps
    .venv/bin/python benchmarks/soak.py --iterations 200 --inference-calls 200 --window 20
    .venv/bin/python benchmarks/soak.py --quick                  # a few steps, for the tests

It prints a Markdown report and writes it, with the JSON, to --output (a folder; the
training's own output, checkpoints and metrics.json, goes to its train/ subfolder).

What runs. Training is what `train_net.py` runs, not a bare loop: `ReliableTrainer` on the
tree-crown demo recipe shrunk to 128 px inputs and narrow heads (soak_training.py), with
its resumable data stream and loader worker(s) (DATALOADER.NUM_WORKERS, --workers, 1 as in
the recipe), its hooks, LR schedule, a checkpoint half-way and at the end, and detectron2's
metrics writers (metrics.json, TensorBoard); evaluation is off and the console log is set
to warnings. Inference is the trained model in eval mode on the ten real trees_val tiles
in turn (soak_inference.py).

What is measured. Every step is timed (for training: from one step's end to the next,
hooks and data wait included). Every --window steps a window records the steps' median
time, this process's RSS (VmRSS), the loader workers' Pss (smaps_rollup: a forked worker's
RSS does not show the pages it copies from its parent; Pss does), the number of live Python
objects, the load average, and in training the size of detectron2's metrics history.

The verdict, per phase, looks at window 2 to the last (window 1 is warm-up):

- Memory is flat if RSS (sampled after glibc's malloc_trim(0), which returns the freed
  memory glibc would otherwise keep; the report shows the untrimmed RSS too) grows by at
  most 8 MiB + 2 MiB per 1000 steps beyond the growth of detectron2's metrics history, and
  the workers' Pss by no more. The history is subtracted
  because it grows by design: `EventStorage` keeps every scalar of every step (up to a
  million per scalar), about 100 bytes per scalar per step, i.e. a few MiB per 1000 steps
  with the cascade's per-stage losses; the report shows it. The 8 MiB are glibc's noise:
  RSS moves by a few MiB as malloc arenas grow, fragment and are trimmed, also with nothing
  leaking (benchmarks/eval_memory.py's test allows 10 MiB for the same reason). Over 2000
  steps the limit is about 12 MiB, so a leak of 8 KiB per step (one small tensor or a few
  dozen Python objects kept per step) fails; one 128x128 float image kept per step (64 KiB)
  fails by tenfold. Over 200 steps only leaks of some 40 KiB per step show.
- Time is flat if a straight line fitted to the windows' median step times ends 0.8 to
  1.25 times where it starts. Medians of 100 steps differ by a few per cent on a quiet
  machine, and one window can be slowed by tens of per cent by something else running; the
  line lets no single window decide. A cost that rises with the step count (a hook or
  writer that walks a growing history, say) shows as a steady rise well past 25% over 2000
  steps. On a shared machine the ratio also carries changes of
  load, so the verdict names a change of the 1-minute load average of 0.5 or more.

A --quick run has windows of 2 steps: it checks that everything runs, and its verdict
means nothing.
"""

import argparse
import time
from pathlib import Path

import torch

from detectron2.utils.logger import setup_logger

from harness import commit, machine
from projects.cascade.demo import register_demo
from report import ResultsFile
from soak_inference import NUM_TILES, run_inference_soak
from soak_report import soak_markdown, summarize_phase, verdict
from soak_training import run_training_soak

QUICK = {"iterations": 6, "inference_calls": 6, "window": 2}
FULL = {"iterations": 2000, "inference_calls": 2000, "window": 100}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, help="training iterations (default 2000)")
    parser.add_argument("--inference-calls", type=int, help="inference calls (default 2000)")
    parser.add_argument("--window", type=int, help="steps per window (default 100)")
    parser.add_argument("--output", default="output/benchmarks/soak", help="folder for the report")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="data-loader worker processes (DATALOADER.NUM_WORKERS; default 1, the recipe's)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--quick", action="store_true", help="a few steps, to check it runs")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for steps in (args.iterations, args.inference_calls):
        # The verdict measures from window 2 on: it needs a third.
        if steps < 3 * args.window:
            parser.error(f"{steps} steps make fewer than 3 windows of {args.window}")
    return args


def main(argv=None):
    args = parse_args(argv)
    # The same call as ReliableTrainer's; it is cached, so the trainer keeps this level.
    setup_logger().setLevel("WARNING")
    torch.set_num_threads(args.threads)
    register_demo()
    out = Path(args.output)
    results = ResultsFile(
        out / "soak.json",
        machine=machine(),
        commit=commit(),
        quick=args.quick,
        settings={
            "iterations": args.iterations,
            "inference_calls": args.inference_calls,
            "window": args.window,
            "workers": args.workers,
            "threads": args.threads,
        },
    )
    start = time.perf_counter()

    windows, model, cfg = run_training_soak(
        args.iterations, args.window, args.workers, out / "train"
    )
    results["training"] = {
        "what": f"ReliableTrainer, tiny tree-crown recipe, batch {cfg.SOLVER.IMS_PER_BATCH} at "
        f"{cfg.INPUT.MAX_SIZE_TRAIN} px, {args.workers} data-loader worker(s).",
        "windows": windows,
        "summary": summarize_phase(windows),
    }
    windows, detections = run_inference_soak(model, cfg, args.inference_calls, args.window)
    results["inference"] = {
        "what": f"The trained model in eval mode, no gradients, the {NUM_TILES} trees_val tiles "
        f"in turn at {cfg.INPUT.MAX_SIZE_TEST} px; {detections:.1f} detections per call.",
        "windows": windows,
        "summary": summarize_phase(windows),
    }
    results["verdict"] = [verdict(p, results[p]["summary"]) for p in ("training", "inference")]
    report = results.finish(soak_markdown, start)
    (out / "soak.md").write_text(report + "\n")
    return results


if __name__ == "__main__":
    main()
