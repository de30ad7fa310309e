#!/usr/bin/env python
"""
torch.profiler of the ROI heads alone (ours vs detectron2's built-in cascade), same weights,
fixed features and proposals of the trees demo (or random R50 weights with --r50):

    .venv/bin/python benchmarks/profile_roi_heads.py [--r50] [--reps 10]
"""

import argparse
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from compared_models import build_trio
from projects.cascade.demo import register_demo
from projects.cascade.modeling.stage_outputs import features_and_proposals
from r50_setup import R50_CONFIGS, propose_anchors
from trees_setup import TREES_CONFIGS
from workloads import random_image, tree_inputs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--r50", action="store_true")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument(
        "--cascade-weights", default="output/trees/cascade_rcnn_seed1/model_final.pth"
    )
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    torch.set_num_threads(2)
    register_demo()
    if args.r50:
        cfgs, models = build_trio(R50_CONFIGS)
        for model in models.values():
            propose_anchors(model)  # 1000 proposals, as in the benchmark
        inputs = [random_image(800, 1333)]
    else:
        weights = args.cascade_weights if Path(args.cascade_weights).is_file() else None
        cfgs, models = build_trio(TREES_CONFIGS, weights)
        inputs = tree_inputs(cfgs["ours"], "trees_val", 1, is_train=False)
    images, features, proposals = features_and_proposals(models["builtin"], inputs)
    for name in ("ours", "builtin"):
        heads = models[name].roi_heads
        with torch.no_grad():
            for _ in range(2):
                heads(images, features, proposals)
            with profile(activities=[ProfilerActivity.CPU], with_stack=False) as prof:
                for _ in range(args.reps):
                    heads(images, features, proposals)
        print(f"\n=== {name} ({len(proposals[0])} proposals, {args.reps} calls)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
