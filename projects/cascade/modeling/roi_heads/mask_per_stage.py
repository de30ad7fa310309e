"""One mask head per cascade stage (ROI_BOX_CASCADE_HEAD.MASK_PER_STAGE), as in mmdetection."""

from typing import Dict, List

import torch
from torch import nn

from detectron2.layers import cat
from detectron2.structures import Instances


class MaskHeadPerStage(nn.ModuleList):
    """
    Head k trains on stage k's positives (`losses`). At test time `forward` averages the
    heads' mask probabilities on the final boxes.

    A detectron2 mask head turns its logits into `pred_masks` itself
    (`mask_rcnn_inference`), so the average is taken over each head's `layers` output.
    Being a ModuleList, its parameters are named `mask_head.{k}.*`.
    """

    def __init__(self, heads: List[nn.Module], num_test_heads: int):
        """
        Args:
            heads: one mask head per stage.
            num_test_heads: how many heads, from the first, take part at test time
                (TEST_STAGE).
        """
        super().__init__(heads)
        self.num_test_heads = num_test_heads

    def forward(self, x: torch.Tensor, instances: List[Instances]) -> List[Instances]:
        """Inference: set `pred_masks` to the heads' mean probability of each box's class."""
        classes = cat([i.pred_classes for i in instances])
        heads = list(self)[: self.num_test_heads]
        mask_probs = sum(_class_probs(head.layers(x), classes) for head in heads)
        mask_probs = mask_probs * (1.0 / len(heads))
        for probs, image_instances in zip(mask_probs.split([len(i) for i in instances]), instances):
            image_instances.pred_masks = probs  # (Ri, 1, M, M), as `mask_rcnn_inference` sets it
        return instances

    def losses(
        self,
        features_per_stage: List,
        positives_per_stage: List[List[Instances]],
        stage_loss_weights: List[float],
    ) -> Dict[str, torch.Tensor]:
        """Head k's mask loss on stage k's positives and their pooled features, times weight k."""
        losses = {}
        for k, (features, positives) in enumerate(zip(features_per_stage, positives_per_stage)):
            loss = self[k](features, positives)["loss_mask"]
            losses[f"loss_mask_stage{k}"] = loss * stage_loss_weights[k]
        return losses


def _class_probs(mask_logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The probabilities of each box's class channel (the only one of a class-agnostic head)."""
    if mask_logits.shape[1] > 1:
        rows = torch.arange(len(classes), device=classes.device)
        mask_logits = mask_logits[rows, classes][:, None]
    return mask_logits.sigmoid()
