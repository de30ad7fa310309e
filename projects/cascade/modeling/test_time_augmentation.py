"""
Test-time augmentation (TEST.AUG.ENABLED; test.aug.enabled in a LazyConfig): detectron2's
`GeneralizedRCNNWithTTA`, set up from the model itself so that LazyConfigs can use it too.
Every option of the cascade applies within each augmented inference (TEST_SCORE,
TEST_STAGE, pruning, per-stage masks), and the merged detections go through the model's
own final NMS (soft-NMS too, TEST_NMS_METHOD).
"""

from typing import Sequence

import torch
from torch import nn

from detectron2.config import CfgNode
from detectron2.modeling import GeneralizedRCNN, GeneralizedRCNNWithTTA
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference

from ..errors import ConfigError

__all__ = ["CascadeRCNNWithTTA"]


class CascadeRCNNWithTTA(GeneralizedRCNNWithTTA):
    """Runs `model` on every resize of `min_sizes` (and its flip), and merges the detections."""

    def __init__(self, model, min_sizes: Sequence[int], max_size: int, flip: bool, batch_size=3):
        model = getattr(model, "module", model)  # DistributedDataParallel while training
        if not isinstance(model, GeneralizedRCNN):
            raise ConfigError(
                f"Test-time augmentation needs a GeneralizedRCNN; this model is a "
                f"{type(model).__name__}."
            )
        heads = model.roi_heads
        if getattr(heads, "keypoint_on", False):
            raise ConfigError("Test-time augmentation does not support keypoint heads.")
        if model.proposal_generator is None:
            raise ConfigError("Test-time augmentation does not support precomputed proposals.")
        predictor = heads.box_predictor
        if isinstance(predictor, nn.ModuleList):  # a cascade: its last stage's settings
            predictor = predictor[-1]
        cfg = CfgNode(
            {
                "MODEL": {
                    "KEYPOINT_ON": False,
                    "LOAD_PROPOSALS": False,
                    "MASK_ON": bool(getattr(heads, "mask_on", False)),
                    "ROI_HEADS": {
                        "NUM_CLASSES": heads.num_classes,
                        "NMS_THRESH_TEST": predictor.test_nms_thresh,
                    },
                },
                "TEST": {
                    "DETECTIONS_PER_IMAGE": predictor.test_topk_per_image,
                    "AUG": {"MIN_SIZES": tuple(min_sizes), "MAX_SIZE": max_size, "FLIP": flip},
                },
            }
        )
        super().__init__(cfg, model, batch_size=batch_size)
        self.detection_inference = getattr(heads, "detection_inference", fast_rcnn_inference)

    def _merge_detections(self, all_boxes, all_scores, all_classes, shape_hw):
        """detectron2's merge of the augmented detections, with the model's own final NMS."""
        num_classes = self.cfg.MODEL.ROI_HEADS.NUM_CLASSES
        scores = torch.zeros(len(all_boxes), num_classes + 1, device=all_boxes.device)
        for row, (cls, score) in enumerate(zip(all_classes, all_scores)):
            scores[row, cls] = score
        merged, _ = self.detection_inference(
            [all_boxes],
            [scores],
            [shape_hw],
            1e-8,
            self.cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
            self.cfg.TEST.DETECTIONS_PER_IMAGE,
        )
        return merged[0]
