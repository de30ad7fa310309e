"""How far an exported model is from PyTorch eager: detections paired as sets, and timings."""

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from detectron2.modeling import GeneralizedRCNN
from detectron2.structures import Instances

from .exporter import INPUT_NAME
from .runtime import ExportedModel

__all__ = [
    "TOLERANCES",
    "pair_detections",
    "Differences",
    "Comparison",
    "compare_with_eager",
    "format_table",
]

# Largest differences from eager accepted by `Differences.failures`: box corners in pixels,
# class scores, and mask probabilities.
TOLERANCES = {"box_px": 1e-3, "score": 1e-4, "mask": 1e-4}


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def pair_detections(boxes_a, classes_a, boxes_b, classes_b) -> Tuple[np.ndarray, np.ndarray]:
    """
    Pair each detection of a with the detection of b of the same class whose box is nearest
    (largest coordinate difference). Detections are matched as sets, not by rank: two
    scores that differ in the last float32 digits can come out in either order from two
    runtimes. Returns (indices into b, paired): `paired` is False where a detection has no
    partner of its class, or shares its nearest partner with another.
    """
    if not len(boxes_a) or not len(boxes_b):
        return np.zeros(len(boxes_a), dtype=np.int64), np.zeros(len(boxes_a), dtype=bool)
    distance = np.abs(boxes_a[:, None, :] - boxes_b[None, :, :]).max(axis=2)
    distance[classes_a[:, None] != classes_b[None, :]] = np.inf
    partner = distance.argmin(axis=1)
    paired = np.isfinite(distance.min(axis=1)) & (
        np.bincount(partner, minlength=len(boxes_b))[partner] == 1
    )
    return partner, paired


@dataclass
class Differences:
    """The largest disagreements between eager and exported detections, over several images."""

    images: int = 0
    detections: int = 0  # eager's, over all images
    count_mismatches: List[str] = field(default_factory=list)  # images whose counts differ
    unpaired: int = 0  # eager detections without an exported one of their class (pair_detections)
    box_px: float = 0.0  # largest |difference| of a box coordinate, in pixels
    box_rel: float = 0.0  # the same, relative to the coordinate (at least 1 px)
    score: float = 0.0
    mask: Optional[float] = None  # mask probabilities; None without masks

    def add(self, name: str, eager: Instances, exported: Dict[str, np.ndarray]) -> None:
        """Compare one image's eager `Instances` with the exported model's outputs."""
        self.images += 1
        self.detections += len(eager)
        if len(eager) != len(exported["scores"]):
            self.count_mismatches.append(f"{name}: {len(eager)} vs {len(exported['scores'])}")
            return
        if not len(eager):
            return
        boxes = _numpy(eager.pred_boxes.tensor)
        partner, paired = pair_detections(
            boxes, _numpy(eager.pred_classes), exported["pred_boxes"], exported["pred_classes"]
        )
        self.unpaired += int((~paired).sum())
        partner, boxes = partner[paired], boxes[paired]
        if not len(partner):
            return
        box_diff = np.abs(boxes - exported["pred_boxes"][partner])
        self.box_px = max(self.box_px, float(box_diff.max()))
        self.box_rel = max(self.box_rel, float((box_diff / np.maximum(np.abs(boxes), 1.0)).max()))
        score_diff = np.abs(_numpy(eager.scores)[paired] - exported["scores"][partner])
        self.score = max(self.score, float(score_diff.max()))
        if eager.has("pred_masks"):
            mask_diff = np.abs(_numpy(eager.pred_masks)[paired] - exported["pred_masks"][partner])
            self.mask = max(self.mask or 0.0, float(mask_diff.max()))

    def failures(self) -> List[str]:
        """What is outside TOLERANCES, in words; empty when everything is within."""
        failures = [f"different numbers of detections on {m}" for m in self.count_mismatches]
        if self.unpaired:
            failures.append(f"{self.unpaired} detections without an exported one of their class")
        for key, value in (("box_px", self.box_px), ("score", self.score), ("mask", self.mask)):
            if value is not None and not value <= TOLERANCES[key]:  # NaN fails too
                failures.append(f"{key} difference {value:.3g} > {TOLERANCES[key]:g}")
        return failures


@dataclass
class Comparison:
    """What `compare_with_eager` measured."""

    differences: Differences
    eager_ms: float  # median time of one image
    exported_ms: float


def _timed(fn: Callable, *args) -> Tuple[object, float]:
    start = time.perf_counter()
    result = fn(*args)
    return result, (time.perf_counter() - start) * 1000.0


def compare_with_eager(
    model: GeneralizedRCNN,
    exported: ExportedModel,
    images: Iterable[Tuple[str, torch.Tensor]],
    repeats: int = 1,
) -> Comparison:
    """
    Run eager and exported on the same inputs, compare their detections and time them:
    each image runs `repeats` times in eager, then `repeats` times exported, and the median
    time is kept (onnxruntime's threads spin for a while after a run, and would slow an
    eager run right after it). Two untimed runs of each on the first image come first:
    TorchScript's profiling executor optimizes the graph on its second call, and
    onnxruntime allocates its buffers on its first.
    """
    images = list(images)
    differences = Differences()
    eager_times, exported_times = [], []

    def eager(image):
        with torch.no_grad():
            return model.inference([{INPUT_NAME: image}], do_postprocess=False)[0]

    for _ in range(2):
        eager(images[0][1])
        exported(images[0][1])
    for name, image in images:
        for _ in range(repeats):
            eager_out, ms = _timed(eager, image)
            eager_times.append(ms)
        for _ in range(repeats):
            exported_out, ms = _timed(exported, image)
            exported_times.append(ms)
        differences.add(os.path.basename(name), eager_out, exported_out)
    return Comparison(differences, float(np.median(eager_times)), float(np.median(exported_times)))


def format_table(rows: Sequence[Tuple[str, Comparison]]) -> str:
    """A markdown table of `compare_with_eager` results, one row per exported format."""
    lines = [
        "| format | images | detections | max box diff (px) | max box diff (rel.) | "
        "max score diff | max mask diff | unpaired | eager ms/img | exported ms/img |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for fmt, c in rows:
        d = c.differences
        mask = "-" if d.mask is None else f"{d.mask:.1e}"
        counts = f"{d.detections}" + (
            f" ({len(d.count_mismatches)} images differ)" if d.count_mismatches else ""
        )
        lines.append(
            f"| {fmt} | {d.images} | {counts} | {d.box_px:.1e} | {d.box_rel:.1e} | {d.score:.1e} | "
            f"{mask} | {d.unpaired} | {c.eager_ms:.0f} | {c.exported_ms:.0f} |"
        )
    return "\n".join(lines)
