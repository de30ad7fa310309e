import uuid

import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from projects.cascade.modeling.stage_outputs import STAGES_KEY, CascadeStageOutputs
from tests.helpers import build, rescaled_inputs, tiny_cfg

SIZES = ((128, 160), (96, 128), (112, 112))
UPSCALE = 1.5  # the "original" images are larger than the network's input


def _jittered(boxes, amount):
    offsets = torch.tensor([amount, -amount, amount, amount])
    return (boxes + offsets).tolist()


@pytest.fixture(scope="module")
def detected_dataset(tmp_path_factory):
    """
    (name, model, inputs, output folder): the synthetic images, registered as a dataset
    whose ground truth is taken from the tiny model's detections of single stages, jittered:
    every set of detections then has an AP well above 0, and the sets differ.
    """
    model = build(tiny_cfg()).eval()
    inputs = rescaled_inputs(SIZES, UPSCALE)
    with torch.no_grad():
        outputs = CascadeStageOutputs(model)(inputs)
    dicts = []
    for x, output in zip(inputs, outputs):
        annotations = []
        for name, amount in (("1", 1.0), ("3", 3.0)):
            found = output[STAGES_KEY][name][:4]
            for box, c in zip(_jittered(found.pred_boxes.tensor, amount), found.pred_classes):
                annotations.append(
                    {"bbox": box, "bbox_mode": BoxMode.XYXY_ABS, "category_id": int(c)}
                )
        dicts.append(
            {
                "file_name": f"synthetic_{x['image_id']}.png",
                "image_id": x["image_id"],
                "height": x["height"],
                "width": x["width"],
                "annotations": annotations,
            }
        )
    name = f"stage_eval_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).thing_classes = ["a", "b", "c"]
    yield name, model, inputs, tmp_path_factory.mktemp("stage_eval")
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)
