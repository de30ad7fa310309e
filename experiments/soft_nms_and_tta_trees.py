#!/usr/bin/env python
"""
The test-time options on the tree crowns, for the trained demo models of
experiments/compare.py: soft-NMS (TEST_NMS_METHOD) and test-time augmentation
(TEST.AUG), for the cascade and for Faster R-CNN, evaluated on trees_val.

Faster R-CNN's head is a one-stage cascade's: its weights are evaluated in a one-stage
CascadeRCNNROIHeads (the "hard" row must then reproduce its own evaluation, which the script
checks), so that it gets the same soft-NMS and test-time augmentation.

    python experiments/soft_nms_and_tta_trees.py                 # seeds 1 2 3 of the demo
    python experiments/soft_nms_and_tta_trees.py --schedule 3x --seeds 1 2

Writes output/trees/soft_nms_and_tta[_3x].md and .json.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from projects.cascade.engine.checkpoint import read_checkpoint
from projects.cascade.modeling.test_time_augmentation import CascadeRCNNWithTTA
from runs import REPO, evaluate, mean_and_spread, metrics_rows

CASCADE = "configs/trees/cascade_rcnn_trees.yaml"
KEY = "MODEL.ROI_BOX_CASCADE_HEAD."
ONE_STAGE = [
    KEY + "IOUS",
    "(0.5,)",
    KEY + "BBOX_REG_WEIGHTS",
    "((10.0, 10.0, 5.0, 5.0),)",
    KEY + "STAGE_LOSS_WEIGHTS",
    "(1.0,)",
]
# name -> (config overrides, test-time augmentation). Soft-NMS's IoU threshold for "linear"
# is ROI_HEADS.NMS_THRESH_TEST, 0.5 here; Bodla et al. use 0.3.
VARIANTS = {
    "hard NMS": ([], False),
    "soft-NMS linear": ([KEY + "TEST_NMS_METHOD", "linear"], False),
    "soft-NMS linear, IoU 0.3": (
        [KEY + "TEST_NMS_METHOD", "linear", "MODEL.ROI_HEADS.NMS_THRESH_TEST", "0.3"],
        False,
    ),
    "soft-NMS gaussian": ([KEY + "TEST_NMS_METHOD", "gaussian"], False),
    "TTA, hard NMS": ([], True),
    "TTA, soft-NMS gaussian": ([KEY + "TEST_NMS_METHOD", "gaussian"], True),
}
# Resizes around the demo's 400 px test size, and their flips.
TTA = {"min_sizes": (320, 400, 480, 560), "max_size": 1000, "flip": True}
METRICS = ("AP", "AP50", "AP75", "AP80", "AP90")
RUN_DIRS = {
    "demo": ("cascade_rcnn_seed{}", "faster_rcnn_seed{}"),
    "3x": ("cascade_rcnn_3x_seed{}", "faster_rcnn_3x_seed{}"),
}


def _one_stage_state(state):
    """Faster R-CNN's box head and predictor under a one-stage cascade's names."""
    renamed = {}
    for name, value in state.items():
        for part in ("box_head", "box_predictor"):
            prefix = f"roi_heads.{part}."
            if name.startswith(prefix):
                name = f"{prefix}0.{name[len(prefix) :]}"
        renamed[name] = value
    return renamed


def one_stage_cascade_weights(weights, folder) -> Path:
    """Faster R-CNN's checkpoint `weights` renamed for a one-stage cascade, written to `folder`."""
    path = Path(folder) / "one_stage_cascade.pth"
    torch.save({"model": _one_stage_state(read_checkpoint(str(weights))["model"])}, path)
    return path


def with_tta(model, cfg):
    return CascadeRCNNWithTTA(model, **TTA)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--schedule", choices=list(RUN_DIRS), default="demo")
    args = parser.parse_args()

    rows = []
    for model_name, pattern, faster in zip(
        ("Cascade R-CNN", "Faster R-CNN"), RUN_DIRS[args.schedule], (False, True)
    ):
        for seed in args.seeds:
            run = REPO / "output" / "trees" / pattern.format(seed)
            own = [r for r in metrics_rows(run) if "bbox/AP" in r][-1]
            folder = tempfile.mkdtemp(prefix="soft_nms_and_tta_")
            weights = run / "model_final.pth"
            if faster:
                weights = one_stage_cascade_weights(weights, folder)
            for variant, (overrides, tta) in VARIANTS.items():
                opts = (ONE_STAGE if faster else []) + overrides
                wrap = with_tta if tta else None
                metrics = evaluate(CASCADE, opts, weights, "trees_val", METRICS, wrap)
                if variant == "hard NMS" and abs(metrics["AP"] - own["bbox/AP"]) > 1e-6:
                    sys.exit(
                        f"{run}: the re-evaluation gives AP {metrics['AP']}, training's "
                        f"evaluation {own['bbox/AP']}: the comparison would not be fair"
                    )
                rows.append({"model": model_name, "seed": seed, "variant": variant, **metrics})
                print(json.dumps(rows[-1]), flush=True)

    lines = [
        f"trees_val, schedule {args.schedule}, seeds {' '.join(map(str, args.seeds))}: "
        "mean ± sample standard deviation (min to max) over the seeds",
        "",
        "| model | test time | " + " | ".join(METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
    ]
    for model_name in ("Cascade R-CNN", "Faster R-CNN"):
        for variant in VARIANTS:
            own = [r for r in rows if r["model"] == model_name and r["variant"] == variant]
            cells = [mean_and_spread([r[m] for r in own]) for m in METRICS]
            lines.append(f"| {model_name} | {variant} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    suffix = "" if args.schedule == "demo" else f"_{args.schedule}"
    output = REPO / "output" / "trees" / f"soft_nms_and_tta{suffix}"
    output.with_suffix(".md").write_text(table + "\n")
    output.with_suffix(".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
