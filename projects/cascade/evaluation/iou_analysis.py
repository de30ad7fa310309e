"""
Where the boxes stand: the IoU of every box that enters a cascade stage with its
best-matching ground-truth box, as the paper's Figure 2 (right) and Figure 4 show it.
A stage is trained for the IoU distribution it sees; this measures that distribution,
for the boxes sampled in training and for all proposals at test time.
"""

import json
from typing import Dict, List

import numpy as np
import torch

from detectron2.structures import pairwise_iou
from detectron2.utils.events import EventStorage

__all__ = ["MODES", "StageInputRecorder", "stage_input_ious", "IoUAnalysis", "format_table", "save"]

MODES = ("training", "inference")
THRESHOLDS = (0.5, 0.6, 0.7)
BINS = np.linspace(0.0, 1.0, 21)


class StageInputRecorder:
    """
    Records, per ROI-heads forward, the boxes that enter each stage of a
    `CascadeRCNNROIHeads` (per image), without touching its code: a forward pre-hook on
    the box pooler keeps the boxes it pools, and one on box head k assigns them to stage
    k. Only a stage's first head call in a forward counts: with TEST_SCORE
    "mean_on_final" every head scores the final boxes once more.

    Use as a context manager; `boxes[k]` then holds stage k's input boxes of the last forward.
    """

    def __init__(self, heads):
        self._heads = heads
        self._handles = []
        self._pooled = None
        self.boxes: Dict[int, list] = {}

    def __enter__(self):
        self._handles = [
            self._heads.register_forward_pre_hook(self._reset),
            self._heads.box_pooler.register_forward_pre_hook(self._keep_pooled),
        ]
        for k, head in enumerate(self._heads.box_head):
            self._handles.append(head.register_forward_pre_hook(self._assigner(k)))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()

    def _reset(self, module, args):
        self.boxes = {}

    def _keep_pooled(self, module, args):
        self._pooled = list(args[1])  # (features, boxes per image)

    def _assigner(self, stage):
        def assign(module, args):
            self.boxes.setdefault(stage, self._pooled)

        return assign


@torch.no_grad()
def stage_input_ious(model, batched_inputs, training: bool) -> List[torch.Tensor]:
    """
    Run `model` (a GeneralizedRCNN with CascadeRCNNROIHeads) on inputs that carry their
    ground truth as "instances", in the network's input frame. Return, per stage, the IoU
    of each box that entered it with its best-matching ground-truth box (0 without one).

    training=True: the RPN and ROI heads run as in training, so the boxes are the
    sampled ones (with the appended ground truth, as the heads train on them); nothing
    is updated: no gradient, and the backbone stays in eval mode so that no
    normalization statistics move. training=False: plain inference, all proposals.
    """
    was_training = model.training
    model.train(training)
    model.backbone.eval()
    try:
        with StageInputRecorder(model.roi_heads) as recorder, EventStorage():
            model(batched_inputs)
    finally:
        model.train(was_training)
    gt_boxes = [x["instances"].gt_boxes.to(model.device) for x in batched_inputs]
    return [
        torch.cat([_best_iou(boxes, gt) for boxes, gt in zip(recorder.boxes[k], gt_boxes)])
        for k in sorted(recorder.boxes)
    ]


def _best_iou(boxes, gt_boxes):
    if len(gt_boxes) == 0:
        return torch.zeros(len(boxes), device=boxes.device)
    return pairwise_iou(boxes, gt_boxes).max(dim=1).values


class IoUAnalysis:
    """Accumulates `stage_input_ious` over a dataset, in both modes; summarizes and draws them."""

    def __init__(self):
        self.ious = {mode: [] for mode in MODES}  # mode -> per stage: list of tensors

    def add(self, mode, ious_per_stage):
        stages = self.ious[mode]
        stages.extend([] for _ in range(len(ious_per_stage) - len(stages)))
        for collected, ious in zip(stages, ious_per_stage):
            collected.append(ious.cpu())

    def summary(self) -> dict:
        """Per mode and stage: the box count, the fraction at IoU >= each threshold, a histogram."""
        summary = {"bins": BINS.tolist(), "thresholds": list(THRESHOLDS)}
        for mode, stages in self.ious.items():
            summary[mode] = []
            for collected in stages:
                ious = torch.cat(collected).numpy()
                summary[mode].append(
                    {
                        "boxes": len(ious),
                        "fraction_above": {
                            str(t): float((ious >= t).mean()) if len(ious) else float("nan")
                            for t in THRESHOLDS
                        },
                        "histogram": np.histogram(ious, BINS)[0].tolist(),
                    }
                )
        return summary


def format_table(summary) -> str:
    """Markdown: per mode and stage, the boxes and their fractions at IoU >= each threshold."""
    header = "| boxes | stage | count | " + " | ".join(f"IoU >= {t}" for t in THRESHOLDS) + " |"
    lines = [header, "|" + "---|" * (3 + len(THRESHOLDS))]
    for mode, label in zip(MODES, ("sampled in training", "all proposals at test time")):
        for k, stage in enumerate(summary[mode]):
            fractions = " | ".join(f"{100 * f:.1f}%" for f in stage["fraction_above"].values())
            lines.append(f"| {label} | {k + 1} | {stage['boxes']} | {fractions} |")
    return "\n".join(lines)


def save(summary, json_path, png_path, title=""):
    """Write the summary as JSON, and one figure with a histogram per mode (rows) and stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(json_path, "w") as f:
        json.dump(summary, f, indent=2)
    num_stages = max(len(summary[mode]) for mode in MODES)
    fig, axes = plt.subplots(
        len(MODES), num_stages, figsize=(3.2 * num_stages, 5.6), squeeze=False, sharex=True
    )
    centers = (BINS[:-1] + BINS[1:]) / 2
    labels = {"training": "sampled in training", "inference": "all proposals, inference"}
    for row, mode in enumerate(MODES):
        for k, stage in enumerate(summary[mode]):
            ax = axes[row][k]
            counts = np.asarray(stage["histogram"])
            ax.bar(centers, counts, width=BINS[1] - BINS[0], color="tab:blue", edgecolor="white")
            ax.set_yscale("log")
            for t in THRESHOLDS:
                ax.axvline(t, color="tab:red", linestyle=":", linewidth=0.8)
            fractions = stage["fraction_above"].items()
            text = "\n".join(f"IoU \u2265 {t}: {100 * f:.1f}%" for t, f in fractions)
            ax.text(
                0.97,
                0.97,
                text,
                transform=ax.transAxes,
                ha="right",
                va="top",
                color="tab:red",
                fontsize=8,
                bbox={"facecolor": "white", "edgecolor": "none"},
            )
            ax.set_title(f"stage {k + 1} input, {labels[mode]}", fontsize=9)
            if row == len(MODES) - 1:
                ax.set_xlabel("IoU with best-matching ground truth")
            if k == 0:
                ax.set_ylabel("boxes")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
