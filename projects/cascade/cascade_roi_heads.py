"""Cascade R-CNN ROI heads (Cai & Vasconcelos, CVPR 2018)."""
from typing import Dict, List, Optional

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.roi_heads.box_head import build_box_head
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers, fast_rcnn_inference
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import get_event_storage

from .config import cascade_stage_settings


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; multiplies the gradient by `scale` on the way back."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


@ROI_HEADS_REGISTRY.register()
class CascadeRCNNROIHeads(StandardROIHeads):
    """
    N box stages at rising IoU thresholds. Stage k is trained on the detached boxes
    that stage k-1 regressed, relabelled at its own threshold, so each stage sees a
    distribution of boxes good enough for its threshold. At test time the stages'
    class scores are averaged and the boxes come from the last stage.

    Parameter names follow detectron2's built-in `CascadeROIHeads`
    (`box_head.{k}`, `box_predictor.{k}`), so its checkpoints load unchanged.
    """

    @configurable
    def __init__(
        self,
        *,
        box_in_features: List[str],
        box_pooler: ROIPooler,
        box_heads: List[nn.Module],
        box_predictors: List[FastRCNNOutputLayers],
        proposal_matchers: List[Matcher],
        stage_loss_weights: List[float],
        scale_feature_gradient: bool = True,
        **kwargs,
    ):
        """
        Args:
            box_heads, box_predictors, proposal_matchers, stage_loss_weights: one per
                stage. The first matcher labels the RPN proposals; matcher k labels
                the boxes refined by stage k-1.
            scale_feature_gradient: scale the gradient into the pooled features by
                1/num_stages, as detectron2 does.
            kwargs: as for `StandardROIHeads`, without `proposal_matcher`.
        """
        self.num_cascade_stages = len(box_heads)
        super().__init__(
            box_in_features=box_in_features,
            box_pooler=box_pooler,
            box_head=nn.ModuleList(box_heads),
            box_predictor=nn.ModuleList(box_predictors),
            proposal_matcher=proposal_matchers[0],
            **kwargs,
        )
        self.proposal_matchers = proposal_matchers
        self.stage_loss_weights = stage_loss_weights
        self.scale_feature_gradient = scale_feature_gradient

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        # Stage 1 labels proposals at IOUS[0] with its own matcher (see _init_box_head).
        del ret["proposal_matcher"]
        ret["scale_feature_gradient"] = cfg.MODEL.ROI_BOX_CASCADE_HEAD.SCALE_FEATURE_GRADIENT
        return ret

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ious, reg_weights, loss_weights = cascade_stage_settings(cfg)
        if not cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG:
            raise ValueError(
                "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG must be True for CascadeRCNNROIHeads."
            )
        in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
        channels = {input_shape[f].channels for f in in_features}
        if len(channels) != 1:
            raise ValueError(
                f"MODEL.ROI_HEADS.IN_FEATURES {in_features} have different channel counts "
                f"{sorted(channels)}; the shared box pooler needs one."
            )
        resolution = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
        box_pooler = ROIPooler(
            output_size=resolution,
            scales=tuple(1.0 / input_shape[f].stride for f in in_features),
            sampling_ratio=cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
            pooler_type=cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE,
        )
        pooled_shape = ShapeSpec(channels=channels.pop(), height=resolution, width=resolution)

        box_heads, box_predictors, matchers = [], [], []
        for iou, weights in zip(ious, reg_weights):
            head = build_box_head(cfg, pooled_shape)
            box_heads.append(head)
            box_predictors.append(
                FastRCNNOutputLayers(
                    cfg, head.output_shape, box2box_transform=Box2BoxTransform(weights=weights)
                )
            )
            # No low-quality matches: a stage's positives must really reach its IoU.
            matchers.append(Matcher([iou], [0, 1], allow_low_quality_matches=False))
        return {
            "box_in_features": in_features,
            "box_pooler": box_pooler,
            "box_heads": box_heads,
            "box_predictors": box_predictors,
            "proposal_matchers": matchers,
            "stage_loss_weights": loss_weights,
        }

    def forward(self, images, features, proposals, targets=None):
        del images
        if not self.training:
            instances = self._forward_box(features, proposals)
            return self.forward_with_given_boxes(features, instances), {}
        if not targets:
            raise ValueError("CascadeRCNNROIHeads needs `targets` (ground truth) in training.")
        # The mask head trains on stage 1's sampled proposals, as in detectron2.
        proposals = self.label_and_sample_proposals(proposals, targets)
        losses = self._forward_box(features, proposals, targets)
        losses.update(self._forward_mask(features, proposals))
        losses.update(self._forward_keypoint(features, proposals))
        return proposals, losses

    def _forward_box(self, features, proposals, targets=None):
        features = [features[f] for f in self.box_in_features]
        image_sizes = [p.image_size for p in proposals]
        stage_outputs = []  # (predictions, proposals) per stage
        for k in range(self.num_cascade_stages):
            if k > 0:
                proposals = self._proposals_from_boxes(refined, image_sizes)
                if self.training:
                    proposals = self._label_boxes(proposals, k, targets)
            predictions = self._run_stage(features, proposals, k)
            refined = self.box_predictor[k].predict_boxes(predictions, proposals)
            stage_outputs.append((predictions, proposals))

        if self.training:
            return self._stage_losses(stage_outputs)
        return self._inference(stage_outputs, refined, image_sizes)

    def _stage_losses(self, stage_outputs) -> Dict[str, torch.Tensor]:
        storage = get_event_storage()
        losses = {}
        for k, (predictions, proposals) in enumerate(stage_outputs):
            with storage.name_scope(f"stage{k}"):
                stage_losses = self.box_predictor[k].losses(predictions, proposals)
            weight = self.stage_loss_weights[k]
            losses.update({f"{name}_stage{k}": v * weight for name, v in stage_losses.items()})
        return losses

    def _inference(self, stage_outputs, final_boxes, image_sizes) -> List[Instances]:
        probs_per_stage = [
            self.box_predictor[k].predict_probs(predictions, proposals)
            for k, (predictions, proposals) in enumerate(stage_outputs)
        ]
        scores = [
            sum(probs) * (1.0 / self.num_cascade_stages) for probs in zip(*probs_per_stage)
        ]
        last = self.box_predictor[-1]
        instances, _ = fast_rcnn_inference(
            final_boxes,
            scores,
            image_sizes,
            last.test_score_thresh,
            last.test_nms_thresh,
            last.test_topk_per_image,
        )
        return instances

    def _run_stage(self, features, proposals, stage):
        box_features = self.box_pooler(features, [p.proposal_boxes for p in proposals])
        if self.training and self.scale_feature_gradient:
            # Every stage adds its full loss to the shared features; scaling by
            # 1/N keeps the backbone's gradient at one stage's worth.
            box_features = _ScaleGradient.apply(box_features, 1.0 / self.num_cascade_stages)
        box_features = self.box_head[stage](box_features)
        return self.box_predictor[stage](box_features)

    def _proposals_from_boxes(self, boxes: List[torch.Tensor], image_sizes) -> List[Instances]:
        """Turn one stage's refined boxes into the next stage's proposals."""
        proposals = []
        for boxes_per_image, image_size in zip(boxes, image_sizes):
            # Detached: like RPN proposals, a stage's inputs carry no gradient.
            boxes_per_image = Boxes(boxes_per_image.detach())
            boxes_per_image.clip(image_size)
            if self.training:
                # Only in training: at test time row i must stay box i in every
                # stage, because the stages' scores are averaged row by row.
                boxes_per_image = boxes_per_image[boxes_per_image.nonempty()]
            p = Instances(image_size)
            p.proposal_boxes = boxes_per_image
            proposals.append(p)
        return proposals

    @torch.no_grad()
    def _label_boxes(
        self, proposals: List[Instances], stage: int, targets: List[Instances]
    ) -> List[Instances]:
        """Match refined boxes to ground truth at this stage's IoU; no re-sampling."""
        num_fg, num_bg = [], []
        for proposals_per_image, targets_per_image in zip(proposals, targets):
            iou = pairwise_iou(targets_per_image.gt_boxes, proposals_per_image.proposal_boxes)
            matched_idxs, is_fg = self.proposal_matchers[stage](iou)
            if len(targets_per_image) > 0:
                gt_classes = targets_per_image.gt_classes[matched_idxs]
                gt_classes[is_fg == 0] = self.num_classes
                gt_boxes = targets_per_image.gt_boxes[matched_idxs]
            else:
                # No ground truth: all background; the boxes are never regressed.
                gt_classes = torch.full_like(matched_idxs, self.num_classes)
                gt_boxes = Boxes(iou.new_zeros((len(proposals_per_image), 4)))
            proposals_per_image.gt_classes = gt_classes
            proposals_per_image.gt_boxes = gt_boxes
            num_fg.append(int((is_fg == 1).sum()))
            num_bg.append(is_fg.numel() - num_fg[-1])

        storage = get_event_storage()
        storage.put_scalar(f"stage{stage}/roi_head/num_fg_samples", sum(num_fg) / len(num_fg))
        storage.put_scalar(f"stage{stage}/roi_head/num_bg_samples", sum(num_bg) / len(num_bg))
        return proposals
