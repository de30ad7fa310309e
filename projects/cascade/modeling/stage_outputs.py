"""
A test-time view of a cascade model that returns, from one inference pass, the detections
of every stage and of every ensemble of stages along with the model's own.
"""

from typing import Dict, List, Tuple

import torch
from torch import nn

from detectron2.modeling import GeneralizedRCNN
from detectron2.structures import Boxes, Instances

from ..errors import ConfigError
from .roi_heads.cascade_roi_heads import CascadeRCNNROIHeads
from .roi_heads.scoring import last_stage, mean_of_stages

__all__ = ["CascadeStageOutputs", "STAGES_KEY", "detections_by_stage", "features_and_proposals"]

STAGES_KEY = "cascade_stages"


class CascadeStageOutputs(nn.Module):
    """
    Wraps a `GeneralizedRCNN` with `CascadeRCNNROIHeads`. For each image it returns

    * "instances": what the model returns, plus `stage_boxes` (R x (num_stages + 1) x 4):
      the proposal of each detection, then the box each stage regressed from it;
    * "cascade_stages": name -> Instances of every stage alone ("1" ... "N") and every
      ensemble ("1~2" ... "1~N"); see `detections_by_stage`.

    Every box is post-processed like the model's own detections, i.e. rescaled to the
    input's "height" x "width", so that evaluators and drawings can use them as they are.
    The backbone, the RPN and the stages run once for all of them.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        model = getattr(model, "module", model)  # DistributedDataParallel while training
        if not isinstance(getattr(model, "roi_heads", None), CascadeRCNNROIHeads):
            raise ConfigError(
                "Per-stage outputs (TEST.CASCADE_STAGE_EVAL, tools/demo.py --stages) need "
                "MODEL.ROI_HEADS.NAME: CascadeRCNNROIHeads; this model's ROI heads are "
                f"{type(getattr(model, 'roi_heads', None)).__name__}."
            )
        self.model = model
        self.train(model.training)

    def forward(self, batched_inputs):
        if self.training:
            raise RuntimeError("CascadeStageOutputs runs at test time; call .eval() first.")
        # GeneralizedRCNN.inference, with detections_by_stage in place of the ROI heads' forward.
        model = self.model
        images, features, proposals = features_and_proposals(model, batched_inputs)
        detections, sets = detections_by_stage(model.roi_heads, features, proposals)

        outputs = GeneralizedRCNN._postprocess(detections, batched_inputs, images.image_sizes)
        for output, input_size in zip(outputs, images.image_sizes):
            _rescale_stage_boxes(output["instances"], input_size)
            output[STAGES_KEY] = {}
        for name, instances in sets.items():
            processed = GeneralizedRCNN._postprocess(instances, batched_inputs, images.image_sizes)
            for output, p in zip(outputs, processed):
                output[STAGES_KEY][name] = p["instances"]
        return outputs


@torch.no_grad()
def features_and_proposals(model: GeneralizedRCNN, batched_inputs):
    """
    What `GeneralizedRCNN.inference` computes before its ROI heads: the preprocessed
    images, the backbone features, and the proposals (the RPN's, or the inputs' own).
    """
    images = model.preprocess_image(batched_inputs)
    features = model.backbone(images.tensor)
    if model.proposal_generator is not None:
        proposals, _ = model.proposal_generator(images, features, None)
    else:
        proposals = [x["proposals"].to(model.device) for x in batched_inputs]
    return images, features, proposals


@torch.no_grad()
def detections_by_stage(
    heads: CascadeRCNNROIHeads, features: Dict[str, torch.Tensor], proposals: List[Instances]
) -> Tuple[List[Instances], Dict[str, List[Instances]]]:
    """
    Run the test-time stages of `heads` once, and return what every stage and every
    ensemble of stages detects, to measure each stage without running the backbone per stage.

    Returns:
        detections: what `heads` returns at test time, with one more field, `stage_boxes`
            (R x (num_stages + 1) x 4): the proposal each detection started from (column 0),
            then the box each stage made of it (column k: the box stage k handed on; last
            column: the detection's box).
        sets: name -> detections per image. "k": stage k's boxes scored by stage k alone
            (TEST_STAGE k, TEST_SCORE "last"); "1~k" for k >= 2: stage k's boxes scored by
            stages 1..k as TEST_SCORE says, or "mean" where it is "last", which is no
            ensemble (TEST_STAGE k). They come out of the heads' own code, so they are the
            detections of a run with those settings.
    """
    if heads.training:
        raise RuntimeError("detections_by_stage is for test time: call .eval() first.")
    box_features = [features[f] for f in heads.box_in_features]
    stages = heads.run_stages(box_features, proposals, heads.num_test_stages)
    scores = heads.score(box_features, stages, heads.scorer)
    detections, kept = heads.detect(stages, scores)
    for image, (instances, kept_rows) in enumerate(zip(detections, kept)):
        # fast_rcnn_inference numbers the rows after dropping those with non-finite boxes
        # or scores; number them as the stages do.
        boxes, image_scores = stages[-1].regressed_boxes[image], scores[image]
        finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(image_scores).all(dim=1)
        rows = finite.nonzero()[kept_rows, 0]
        instances.stage_boxes = _stage_boxes_of(stages, image, rows, instances)
    detections = heads.forward_with_given_boxes(features, detections)

    ensemble = mean_of_stages if heads.scorer is last_stage else heads.scorer
    sets = {}
    for k in range(1, len(stages) + 1):
        sets[str(k)] = heads.detect(stages[:k], heads.score(box_features, stages[:k], last_stage))[
            0
        ]
    for k in range(2, len(stages) + 1):
        sets[f"1~{k}"] = heads.detect(stages[:k], heads.score(box_features, stages[:k], ensemble))[
            0
        ]
    return detections, sets


def _stage_boxes_of(stages, image, rows, detections) -> torch.Tensor:
    """
    The path of every detection of one image through the stages: its proposal, the box
    each stage handed to the next, and the last stage's box of the detected class.
    """
    columns = [stages[0].proposals[image].proposal_boxes.tensor[rows]]
    columns += [stage.next_stage_boxes[image][rows] for stage in stages[:-1]]
    last = stages[-1].regressed_boxes[image][rows]
    if last.shape[1] > 4:  # class-specific regression
        per_class = last.view(len(rows), last.shape[1] // 4, 4)
        last = per_class[torch.arange(len(rows), device=last.device), detections.pred_classes]
    columns.append(last)
    stage_boxes = Boxes(torch.stack(columns, dim=1).view(-1, 4))
    stage_boxes.clip(detections.image_size)  # as the detections' boxes are
    return stage_boxes.tensor.view(len(rows), len(columns), 4)


def _rescale_stage_boxes(instances, input_size):
    """Scale `stage_boxes` from the network's input size, as detector_postprocess scales boxes."""
    scale_x = instances.image_size[1] / input_size[1]
    scale_y = instances.image_size[0] / input_size[0]
    shape = instances.stage_boxes.shape
    boxes = Boxes(instances.stage_boxes.reshape(-1, 4))
    boxes.scale(scale_x, scale_y)
    boxes.clip(instances.image_size)
    instances.stage_boxes = boxes.tensor.view(shape)
