"""
What each cascade stage does, in the two measures of the paper's localization and detection
plots, drawn per stage of one trained cascade:

* localization: for every box that enters stage k at test time, its IoU with its
  best-matching ground-truth box (input IoU) against the IoU of the box stage k regressed
  from it with that same ground-truth box (output IoU). A stage improves the boxes it gets
  where the mean output IoU lies above the diagonal;
* detection: COCO AP at each IoU threshold 0.50, 0.55, ..., 0.95, of every stage alone and
  of the model's own output, all from one inference pass (`CascadeStageOutputs`).
"""

import json
import math
from typing import Dict, List

import numpy as np
import torch

from detectron2.structures import Boxes, pairwise_iou

from ..modeling.roi_heads.nonfinite import finite_or_zero
from ..modeling.stage_outputs import STAGES_KEY, features_and_proposals
from .coco_evaluation import COCOEvaluatorAtIoUs, ap_at_iou
from .stage_evaluation import quiet_coco

__all__ = [
    "INPUT_IOU_EDGES",
    "AP_IOUS",
    "MODEL_SET",
    "localization_pairs",
    "localization_curves",
    "StageAPByIoU",
    "summarize",
    "set_label",
    "format_tables",
    "save",
]

# Input-IoU bins [0.50, 0.55), ..., [0.95, 1.00]: the paper's axis. Boxes below 0.5 are
# mostly background, which no stage is trained to move onto an object.
INPUT_IOU_EDGES = np.round(np.linspace(0.5, 1.0, 11), 2)
# COCOeval's thresholds, at which it stores a precision array each.
AP_IOUS = tuple(float(t) for t in np.round(np.linspace(0.5, 0.95, 10), 2))
# The name of the model's own detections among the sets of detections.
MODEL_SET = "model"
STAGE_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


@torch.no_grad()
def localization_pairs(model, batched_inputs) -> List[torch.Tensor]:
    """
    Run `model` (a GeneralizedRCNN with CascadeRCNNROIHeads, in eval mode) on inputs that
    carry their ground truth as "instances", in the network's input frame. Return, per
    test-time stage, an (R, 2) tensor with a row per box that entered the stage in an image
    with ground truth: the box's IoU with its best-matching ground-truth box, and the IoU
    with that same ground-truth box of the one box the stage regressed from it.

    The regressed box is the one the stage hands on (for class-specific regression, that of
    the top-scoring foreground class), clipped to the image as the next stage's input and
    the detections are; for the last stage, it is the box the detection would take. Images
    without ground truth give no rows: there is no box to measure against. With
    TEST_PRUNE_TOPK or TEST_PRUNE_NMS_THRESH, stage 1's rows are the ones that survive the
    pruning, the only ones the run keeps.
    """
    if model.training:
        raise RuntimeError("localization_pairs measures the test-time stages: call .eval() first.")
    _, features, proposals = features_and_proposals(model, batched_inputs)
    heads = model.roi_heads
    box_features = [features[f] for f in heads.box_in_features]
    stages = heads.run_stages(box_features, proposals, heads.num_test_stages)
    gt_boxes = [x["instances"].gt_boxes.to(model.device) for x in batched_inputs]
    pairs = []
    for stage in stages:
        # A row that became non-finite goes on as the zero box (nonfinite.py): IoU 0.
        refined = finite_or_zero(stage.next_stage_boxes)
        per_image = [
            _pairs(p.proposal_boxes, out, gt, p.image_size)
            for p, out, gt in zip(stage.proposals, refined, gt_boxes)
            if len(gt) > 0
        ]
        pairs.append(torch.cat(per_image) if per_image else torch.zeros(0, 2))
    return pairs


def _pairs(inputs: Boxes, outputs: torch.Tensor, gt_boxes: Boxes, image_size) -> torch.Tensor:
    input_iou, matched = pairwise_iou(inputs, gt_boxes).max(dim=1)
    outputs = Boxes(outputs.clone())
    outputs.clip(image_size)
    output_iou = pairwise_iou(outputs, gt_boxes).gather(1, matched[:, None]).squeeze(1)
    return torch.stack([input_iou, output_iou], dim=1).cpu()


def localization_curves(pairs_per_stage: List[torch.Tensor]) -> List[dict]:
    """
    Per stage: its box count, and per bin of input IoU (INPUT_IOU_EDGES; IoU 1.0 falls in
    the last) the boxes in it, their mean input IoU and their mean output IoU (None without
    boxes). The curve is drawn at the mean input IoU, so that its height above the
    diagonal is the bin's mean gain in IoU.
    """
    curves = []
    for pairs in pairs_per_stage:
        pairs = pairs.double().numpy()
        # np.digitize's bins are [a, b); the last one is closed so that 1.0 counts.
        last = len(INPUT_IOU_EDGES) - 2
        bins = np.minimum(np.digitize(pairs[:, 0], INPUT_IOU_EDGES) - 1, last)  # -1: below 0.5
        curve = []
        for b in range(last + 1):
            in_bin = pairs[bins == b]
            mean = in_bin.mean(axis=0).tolist() if len(in_bin) else (None, None)
            curve.append(
                {"boxes": len(in_bin), "mean_input_iou": mean[0], "mean_output_iou": mean[1]}
            )
        curves.append({"boxes": len(pairs), "bins": curve})
    return curves


class _APAtEachIoU(COCOEvaluatorAtIoUs):
    """COCOEvaluatorAtIoUs that keeps the AP at each of AP_IOUS, read from its COCOeval run."""

    def __init__(self, dataset_name, output_dir):
        # output_dir: where detectron2 converts a dataset that is not in COCO format.
        super().__init__(dataset_name, tasks=("bbox",), distributed=False, output_dir=output_dir)
        # Each set would write its detections over the others' coco_instances_results.json.
        self._output_dir = None
        self.ap_at_each_iou = None
        self.reset()

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        self.ap_at_each_iou = [
            math.nan if coco_eval is None else ap_at_iou(coco_eval, t) for t in AP_IOUS
        ]
        return super()._derive_coco_results(coco_eval, iou_type, class_names)


class StageAPByIoU:
    """
    COCO box AP at each of AP_IOUS of every stage alone ("1" ... "N": stage k's boxes,
    scored by stage k, as with TEST_STAGE k and TEST_SCORE "last") and of the model's own
    detections (MODEL_SET), from the outputs of `CascadeStageOutputs`: one inference pass
    for all of them. Each set goes through its own COCOEvaluatorAtIoUs, so its AP at 0.5
    and 0.75 are those of the standard evaluation of such a model.
    """

    def __init__(self, dataset_name: str, output_dir: str):
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._evaluators: Dict[str, _APAtEachIoU] = {}
        self._image_ids = []

    def process(self, inputs, outputs):
        for output in outputs:
            if STAGES_KEY not in output:
                raise ValueError(
                    "StageAPByIoU needs the per-stage detections of CascadeStageOutputs; "
                    f"these outputs have only {sorted(output)}."
                )
        single_stages = [name for name in outputs[0][STAGES_KEY] if "~" not in name]
        for name in [*single_stages, MODEL_SET]:
            if name not in self._evaluators:
                self._evaluators[name] = _APAtEachIoU(self._dataset_name, self._output_dir)
            instances = [
                o["instances"] if name == MODEL_SET else o[STAGES_KEY][name] for o in outputs
            ]
            self._evaluators[name].process(inputs, [{"instances": i} for i in instances])
        self._image_ids.extend(x["image_id"] for x in inputs)

    def evaluate(self) -> Dict[str, List[float]]:
        """Set name -> AP (%) at each of AP_IOUS, over the images processed (no others)."""
        image_ids = sorted(set(self._image_ids))
        results = {}
        for name, evaluator in self._evaluators.items():
            with quiet_coco(evaluator._logger):
                evaluator.evaluate(img_ids=image_ids)
            if evaluator.ap_at_each_iou is None:
                raise ValueError(
                    f"{self._dataset_name} has no annotations to evaluate set {name!r} on."
                )
            results[name] = evaluator.ap_at_each_iou
        return results


def summarize(
    pairs_per_stage: List[torch.Tensor], ap_by_set: Dict[str, List[float]], test_score: str
) -> dict:
    """What the figure draws, as JSON: the localization curves and the AP of every set."""
    return {
        "input_iou_edges": INPUT_IOU_EDGES.tolist(),
        "localization": localization_curves(pairs_per_stage),
        "ap_ious": list(AP_IOUS),
        "detection": ap_by_set,
        "test_score": test_score,
    }


def set_label(name: str, num_stages: int, test_score: str) -> str:
    """How a set is named in the figure and tables: "1" ... "N", and the model's output."""
    if name != MODEL_SET:
        return name
    if test_score == "last":
        return f"{num_stages}, the model's output (TEST_SCORE last)"
    return f"1~{num_stages}, the model's output"


def format_tables(summary) -> str:
    """Markdown: the mean output IoU per input-IoU bin and stage; the AP per threshold and set."""
    stages = summary["localization"]
    columns = [f"stage {k + 1}: boxes, mean output IoU" for k in range(len(stages))]
    lines = ["| input IoU | " + " | ".join(columns) + " |", "|---|" + "---|" * len(stages)]
    edges = summary["input_iou_edges"]
    for b, (low, high) in enumerate(zip(edges[:-1], edges[1:])):
        cells = []
        for stage in stages:
            row = stage["bins"][b]
            cells.append(
                f"{row['boxes']}, {row['mean_output_iou']:.3f}" if row["boxes"] else "0, -"
            )
        lines.append(f"| {low:.2f}-{high:.2f} | " + " | ".join(cells) + " |")
    lines.append("")
    thresholds = summary["ap_ious"]
    lines.append("| set | " + " | ".join(f"AP{round(100 * t)}" for t in thresholds) + " |")
    lines.append("|---|" + "---:|" * len(thresholds))
    for name, aps in summary["detection"].items():
        label = set_label(name, len(stages), summary["test_score"])
        lines.append(f"| {label} | " + " | ".join(f"{ap:.1f}" for ap in aps) + " |")
    return "\n".join(lines)


def save(summary, json_path, png_path, title=""):
    """Write the summary as JSON, and the two panels, localization and detection, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(json_path, "w") as f:
        json.dump(summary, f, indent=2)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    left.plot([0.5, 1.0], [0.5, 1.0], color="grey", linestyle="--", linewidth=1, label="no change")
    for k, stage in enumerate(summary["localization"]):
        rows = [r for r in stage["bins"] if r["boxes"]]
        left.plot(
            [r["mean_input_iou"] for r in rows],
            [r["mean_output_iou"] for r in rows],
            marker="o",
            markersize=3,
            color=_colour(k),
            label=f"stage {k + 1}",
        )
    left.set_xlim(0.5, 1.0)
    left.set_xlabel("input IoU (bin mean)")
    left.set_ylabel("output IoU (bin mean)")
    left.set_title("localization: each stage on the boxes it gets", fontsize=10)
    left.legend(fontsize=8)

    num_stages = len(summary["localization"])
    for name, aps in summary["detection"].items():
        model = name == MODEL_SET
        right.plot(
            summary["ap_ious"],
            aps,
            marker="o",
            markersize=3,
            color="black" if model else _colour(int(name) - 1),
            linestyle="--" if model else "-",
            label=set_label(name, num_stages, summary["test_score"]),
        )
    right.set_xlabel("IoU threshold")
    right.set_ylabel("AP (%)")
    right.set_title("detection: AP of each stage alone and of the model", fontsize=10)
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png_path, dpi=90)
    plt.close(fig)


def _colour(stage_index):
    return STAGE_COLOURS[stage_index % len(STAGE_COLOURS)]
