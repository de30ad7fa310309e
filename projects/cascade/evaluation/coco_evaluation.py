"""COCO evaluation that also reports AP at strict IoUs, where a cascade's gains lie."""

import numpy as np

from detectron2.evaluation import COCOEvaluator

EXTRA_IOUS = (0.6, 0.7, 0.8, 0.85, 0.9, 0.95)


def ap_at_iou(coco_eval, iou: float) -> float:
    """COCO AP (all areas, most detections) at one IoU threshold, in percent."""
    thresholds = coco_eval.params.iouThrs
    t = int(np.argmin(np.abs(thresholds - iou)))
    if not np.isclose(thresholds[t], iou):
        raise ValueError(f"COCOeval has no IoU threshold {iou}; it has {thresholds.tolist()}")
    precision = coco_eval.eval["precision"][t, :, :, 0, -1]  # recall x class
    precision = precision[precision > -1]
    return float(precision.mean() * 100) if precision.size else float("nan")


class COCOEvaluatorAtIoUs(COCOEvaluator):
    """
    detectron2's `COCOEvaluator` plus AP60, AP70, AP80, AP85, AP90 and AP95, read from the
    same COCOeval run. AP50 and AP75 alone hide what the paper's Table 2 shows: the cascade
    gains little at IoU 0.5 and most at 0.8-0.9.
    """

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        results = super()._derive_coco_results(coco_eval, iou_type, class_names)
        for iou in EXTRA_IOUS:
            name = f"AP{round(iou * 100)}"
            results[name] = float("nan") if coco_eval is None else ap_at_iou(coco_eval, iou)
        return results
