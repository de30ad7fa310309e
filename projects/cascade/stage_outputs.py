"""
A test-time view of a cascade model that returns, from one inference pass, the detections
of every stage and of every ensemble of stages along with the model's own.
"""
from torch import nn

from detectron2.modeling import GeneralizedRCNN
from detectron2.structures import Boxes

from .cascade_roi_heads import CascadeRCNNROIHeads
from .errors import ConfigError

__all__ = ["CascadeStageOutputs", "STAGES_KEY"]

STAGES_KEY = "cascade_stages"


class CascadeStageOutputs(nn.Module):
    """
    Wraps a `GeneralizedRCNN` with `CascadeRCNNROIHeads`. For each image it returns

    * "instances": what the model returns, plus `stage_boxes` (R x (num_stages + 1) x 4):
      the proposal of each detection, then the box each stage regressed from it;
    * "cascade_stages": name -> Instances of every stage alone ("1" ... "N") and every
      ensemble ("1~2" ... "1~N"); see `CascadeRCNNROIHeads.inference_by_stage`.

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
        # GeneralizedRCNN.inference, with inference_by_stage in place of the ROI heads' forward.
        model = self.model
        images = model.preprocess_image(batched_inputs)
        features = model.backbone(images.tensor)
        if model.proposal_generator is not None:
            proposals, _ = model.proposal_generator(images, features, None)
        else:
            proposals = [x["proposals"].to(model.device) for x in batched_inputs]
        detections, sets = model.roi_heads.inference_by_stage(features, proposals)

        outputs = GeneralizedRCNN._postprocess(detections, batched_inputs, images.image_sizes)
        for output, input_size in zip(outputs, images.image_sizes):
            _rescale_stage_boxes(output["instances"], input_size)
            output[STAGES_KEY] = {}
        for name, instances in sets.items():
            processed = GeneralizedRCNN._postprocess(instances, batched_inputs, images.image_sizes)
            for output, p in zip(outputs, processed):
                output[STAGES_KEY][name] = p["instances"]
        return outputs


def _rescale_stage_boxes(instances, input_size):
    """Scale `stage_boxes` from the network's input size, as detector_postprocess scales boxes."""
    scale_x = instances.image_size[1] / input_size[1]
    scale_y = instances.image_size[0] / input_size[0]
    shape = instances.stage_boxes.shape
    boxes = Boxes(instances.stage_boxes.reshape(-1, 4))
    boxes.scale(scale_x, scale_y)
    boxes.clip(instances.image_size)
    instances.stage_boxes = boxes.tensor.view(shape)
