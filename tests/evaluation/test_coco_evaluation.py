"""COCOEvaluatorAtIoUs: AP at strict IoUs, read from the same COCOeval run."""

import torch

from detectron2.data import DatasetCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from projects.cascade.evaluation import COCOEvaluatorAtIoUs


def _evaluate(widening, tmp_path):
    """Every ground-truth box, widened so its IoU with itself is `widening`, as a detection."""
    evaluator = COCOEvaluatorAtIoUs("trees_test", output_dir=str(tmp_path))
    evaluator.reset()
    for d in DatasetCatalog.get("trees_test"):
        boxes = torch.tensor(
            [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in d["annotations"]]
        )
        boxes[:, 2] = boxes[:, 0] + (boxes[:, 2] - boxes[:, 0]) / widening
        inst = Instances((d["height"], d["width"]))
        inst.pred_boxes = Boxes(boxes)
        inst.scores = torch.ones(len(boxes))
        inst.pred_classes = torch.zeros(len(boxes), dtype=torch.long)
        evaluator.process([{"image_id": d["image_id"]}], [{"instances": inst}])
    return evaluator.evaluate()["bbox"]


def test_ap_at_strict_ious_follows_box_overlap(trees_prepared, tmp_path):
    result = _evaluate(0.65, tmp_path)
    assert result["AP60"] > 80, result
    for iou in (70, 80, 85, 90, 95):
        assert result[f"AP{iou}"] < 5, result
    assert abs(result["AP50"] - result["AP60"]) < 10, result
    exact = _evaluate(1.0, tmp_path)  # the control: exact boxes reach every threshold
    assert exact["AP95"] > 99 and exact["AP85"] > 99, exact
