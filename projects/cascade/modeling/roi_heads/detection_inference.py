"""
The per-class NMS that turns the last stage's boxes into detections (TEST_NMS_METHOD):
detectron2's `fast_rcnn_inference` ("hard"), or the same steps with soft-NMS.
"""

from typing import Callable

from detectron2.modeling.roi_heads.fast_rcnn import (
    fast_rcnn_inference,
    fast_rcnn_inference_single_image,
)

from ...layers.soft_nms import batched_soft_nms

__all__ = ["detection_inference", "SoftNMSInference"]


def detection_inference(method: str, sigma: float, min_score: float) -> Callable:
    """A function with `fast_rcnn_inference`'s arguments and results, for `method`."""
    if method == "hard":
        return fast_rcnn_inference
    return SoftNMSInference(method, sigma, min_score)


class SoftNMSInference:
    """
    `fast_rcnn_inference` with soft-NMS: the same rows dropped (non-finite), the same score
    threshold and clipping, then soft-NMS per class (`nms_thresh` is linear soft-NMS's IoU
    threshold), and the top `topk_per_image` by decayed score, which the detections report.
    """

    def __init__(self, method: str, sigma: float, min_score: float):
        self.method, self.sigma, self.min_score = method, sigma, min_score

    def __call__(self, boxes, scores, image_shapes, score_thresh, nms_thresh, topk_per_image):
        results = [
            self._single_image(b, s, shape, score_thresh, nms_thresh, topk_per_image)
            for b, s, shape in zip(boxes, scores, image_shapes)
        ]
        return [r[0] for r in results], [r[1] for r in results]

    def _single_image(self, boxes, scores, image_shape, score_thresh, nms_thresh, topk_per_image):
        # detectron2's steps, with nothing suppressed: no two boxes overlap by more than IoU 1.
        candidates, rows = fast_rcnn_inference_single_image(
            boxes, scores, image_shape, score_thresh, 1.0, -1
        )
        keep, decayed = batched_soft_nms(
            candidates.pred_boxes.tensor,
            candidates.scores,
            candidates.pred_classes,
            self.method,
            nms_thresh,
            self.sigma,
            self.min_score,
        )
        if topk_per_image >= 0:
            keep, decayed = keep[:topk_per_image], decayed[:topk_per_image]
        result = candidates[keep]
        result.scores = decayed
        return result, rows[keep]
