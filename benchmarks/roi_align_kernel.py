#!/usr/bin/env python
"""
RoIAlign alone: torchvision's CPU kernel against the project's parallel one
(projects/cascade/layers/csrc), forward and backward, with 1 and 2 torch threads, on one
R50-FPN P2 map (256 x 200 x 336, stride 4) and 1000 random boxes of up to 200 px:

    .venv/bin/python benchmarks/roi_align_kernel.py [--reps 5]

Times are medians of paired repetitions (torchvision, ours, then the reverse order).
"""

import argparse
import statistics
import sys
import time
from functools import partial

import torch
from torchvision.ops import roi_align

from projects.cascade.layers.roi_align import ParallelROIAlign

SCALE, OUTPUT, SAMPLING = 0.25, (7, 7), 0


def inputs(num_boxes=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(1, 256, 200, 336, generator=g)
    x0y0 = torch.rand(num_boxes, 2, generator=g) * torch.tensor([1333.0, 800.0])
    x1y1 = x0y0 + torch.rand(num_boxes, 2, generator=g) * 200
    boxes = torch.cat([torch.zeros(num_boxes, 1), x0y0, x1y1], dim=1)
    return features, boxes


def paired(fns, reps):
    times = {n: [] for n in fns}
    for r in range(reps + 1):  # the first round warms up
        for n in fns if r % 2 == 0 else list(fns)[::-1]:
            start = time.perf_counter()
            fns[n]()
            if r > 0:
                times[n].append(time.perf_counter() - start)
    return {n: statistics.median(ts) * 1000 for n, ts in times.items()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    features, boxes = inputs()
    ours = ParallelROIAlign(OUTPUT, SCALE, SAMPLING, True)
    leaf = features.clone().requires_grad_()
    print("| threads | pass | torchvision | ours | ours / torchvision |")
    print("|---|---|---|---|---|")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        by_tv = roi_align(leaf, boxes, OUTPUT, SCALE, SAMPLING, True)
        by_ours = ours(leaf, boxes)
        if not torch.equal(by_tv, by_ours):
            sys.exit("the two kernels' outputs differ: the timing would compare different work")
        grad = torch.randn_like(by_tv)
        passes = {
            "forward": {
                "torchvision": lambda: roi_align(features, boxes, OUTPUT, SCALE, SAMPLING, True),
                "ours": lambda: ours(features, boxes),
            },
            "backward": {
                "torchvision": partial(torch.autograd.grad, by_tv, leaf, grad, retain_graph=True),
                "ours": partial(torch.autograd.grad, by_ours, leaf, grad, retain_graph=True),
            },
        }
        for name, fns in passes.items():
            ms = paired(fns, args.reps)
            print(
                f"| {threads} | {name} | {ms['torchvision']:.0f} ms | {ms['ours']:.0f} ms | "
                f"{ms['ours'] / ms['torchvision']:.2f} |"
            )


if __name__ == "__main__":
    main()
