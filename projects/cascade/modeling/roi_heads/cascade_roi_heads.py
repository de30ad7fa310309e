"""Cascade R-CNN ROI heads (Cai & Vasconcelos, CVPR 2018): detectron2's cascade, with options."""

from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, CascadeROIHeads
from detectron2.modeling.roi_heads.box_head import build_box_head
from detectron2.modeling.roi_heads.cascade_rcnn import _ScaleGradient
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage

from ...config import (
    cascade_head_arguments,
    cascade_stage_settings,
    cascade_switch,
    check_head_arguments,
)
from ...errors import ConfigError
from ...layers import parallelize_pooler
from .final_nms import final_nms
from .mask_per_stage import MaskHeadPerStage, mask_losses_per_stage
from .nonfinite import check_stage_losses, check_stage_outputs, finite_or_zero, nan_where_nonfinite
from .pruning import StagePruner, keep_all
from .sampling import (
    IgnoreRegionFilter,
    StageSampler,
    flag_ground_truth,
    keep_all_proposals,
    match_at_stage_iou,
)
from .scoring import SCORERS

__all__ = ["CascadeRCNNROIHeads", "Stage"]


class Stage(NamedTuple):
    """What one stage produced."""

    predictions: Tuple[torch.Tensor, torch.Tensor]  # class logits, box deltas
    proposals: List[Instances]  # its input boxes, per image
    # The boxes it regressed, per image (one per class if class-specific), and the one box
    # per row it hands to the next stage; None for the last stage in training.
    boxes: Optional[List[torch.Tensor]]
    refined: Optional[List[torch.Tensor]]


@ROI_HEADS_REGISTRY.register()
class CascadeRCNNROIHeads(CascadeROIHeads):
    """
    detectron2's `CascadeROIHeads` with the options of mmdetection and the paper (see
    `add_cascade_config`); with their defaults it gives the built-in's outputs and losses.

    Stage k is trained on the detached boxes that stage k-1 regressed, relabelled at its
    own IoU, so each stage sees boxes good enough for its threshold. At test time the boxes
    come from the last stage and the class scores from the stages together (TEST_SCORE).

    With class-specific regression each row still hands ONE box to the next stage: in
    training a positive's ground-truth class's box, otherwise the box of its top-scoring
    foreground class (as mmdetection does). The detections take the last stage's box of
    every class, so that each class is reported with its own regression.

    The options are settled here, at construction, as the functions the stages call:
    `label_stage` (training), `prune`, `test_scorer` and `final_nms` (inference).
    """

    @configurable
    def __init__(
        self,
        *,
        box_in_features: List[str],
        box_pooler: ROIPooler,
        box_heads: List[nn.Module],
        box_predictors: List[nn.Module],
        proposal_matchers: List[Matcher],
        stage_loss_weights: Optional[List[float]] = None,
        scale_feature_gradient: bool = True,
        test_score: str = "mean",
        num_test_stages: Optional[int] = None,
        resample: bool = False,
        test_prune_topk: int = 0,
        test_prune_nms_thresh: float = 1.0,
        test_nms_method: str = "hard",
        test_soft_nms_sigma: float = 0.5,
        test_soft_nms_min_score: float = 0.001,
        ignore_iof_thresh: float = -1.0,
        **kwargs,
    ):
        """
        Args:
            box_in_features, box_pooler, box_heads, box_predictors, proposal_matchers:
                as for detectron2's `CascadeROIHeads`: one head, predictor and matcher per
                stage. The first matcher labels the RPN proposals, matcher k the boxes
                stage k-1 regressed.
            stage_loss_weights: multiplies every loss of stage k; None: 1 per stage.
            scale_feature_gradient: scale the gradient into the pooled features by
                1/num_stages, as detectron2 does.
            test_score: "mean", "mean_on_final" or "last" (TEST_SCORE).
            num_test_stages: run only the first stages at test time; None runs all.
            resample: re-sample every stage's boxes, as stage 1 is (RESAMPLE).
            test_prune_topk, test_prune_nms_thresh: test time, which boxes of stage 1 go on
                to stages 2..N (TEST_PRUNE_TOPK, TEST_PRUNE_NMS_THRESH); 0 and 1.0 send all.
            test_nms_method, test_soft_nms_sigma, test_soft_nms_min_score: the final NMS,
                "hard" (detectron2's) or soft-NMS (TEST_NMS_METHOD, ...).
            ignore_iof_thresh: in training, ignore the boxes inside crowd regions at every
                stage (IGNORE_IOF_THRESH); negative: off.
            kwargs: as for `StandardROIHeads`. A `MaskHeadPerStage` as `mask_head` gives
                each stage its own mask head.
        """
        # Every argument of this signature, checked before anything is built from them.
        check_head_arguments(
            **{k: v for k, v in locals().items() if k not in ("self", "kwargs", "__class__")}
        )
        num_stages = len(box_heads)
        if stage_loss_weights is None:
            stage_loss_weights = [1.0] * num_stages
        super().__init__(
            box_in_features=box_in_features,
            box_pooler=box_pooler,
            box_heads=box_heads,
            box_predictors=box_predictors,
            proposal_matchers=proposal_matchers,
            **kwargs,
        )
        self.stage_loss_weights = list(stage_loss_weights)
        self.feature_gradient_scale = 1.0 / num_stages if scale_feature_gradient else 1.0
        self.test_score = test_score
        self.num_test_stages = num_test_stages or num_stages
        self.mask_per_stage = self.mask_on and isinstance(self.mask_head, MaskHeadPerStage)

        # Training. RESAMPLE with PROPOSAL_APPEND_GT replaces, at every stage, the
        # ground-truth boxes the previous stage appended and regressed by exact ones; the
        # first stage's proposals carry the flag that says which those are.
        sampler = StageSampler(
            self.num_classes,
            with_masks=self.mask_per_stage,
            resample=resample,
            batch_size_per_image=self.batch_size_per_image,
            positive_fraction=self.positive_fraction,
            append_ground_truth=self.proposal_append_gt,
        )
        self.label_stage = sampler if (resample or self.mask_per_stage) else match_at_stage_iou
        self.drop_ignored = (
            IgnoreRegionFilter(ignore_iof_thresh) if ignore_iof_thresh >= 0 else keep_all_proposals
        )
        self._first_stage_inputs = flag_ground_truth if sampler.replaces_ground_truth else _as_given
        self._mask_losses = (
            mask_losses_per_stage if self.mask_per_stage else _first_stage_mask_losses
        )
        class_specific = any(p.bbox_pred.out_features > 4 for p in box_predictors)
        self._boxes_handed_on = self._boxes_of_one_class if class_specific else _as_regressed
        # Inference.
        pruned = test_prune_topk > 0 or test_prune_nms_thresh < 1.0
        self.prune = StagePruner(test_prune_topk, test_prune_nms_thresh) if pruned else keep_all
        self.test_scorer = SCORERS[test_score]
        self.test_nms_method = test_nms_method
        self.final_nms = final_nms(test_nms_method, test_soft_nms_sigma, test_soft_nms_min_score)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret.update(cascade_head_arguments(cfg))
        return ret

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ious, reg_weights, loss_weights = cascade_stage_settings(cfg)
        in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
        channels = {input_shape[f].channels for f in in_features}
        if len(channels) != 1:
            raise ConfigError(
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
        if cascade_switch(cfg, "PARALLEL_CPU_ROI_ALIGN"):
            box_pooler = parallelize_pooler(box_pooler)
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

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        ret = super()._init_mask_head(cfg, input_shape)
        if ret.get("mask_pooler") is not None and cascade_switch(cfg, "PARALLEL_CPU_ROI_ALIGN"):
            ret["mask_pooler"] = parallelize_pooler(ret["mask_pooler"])
        if not (cascade_switch(cfg, "MASK_PER_STAGE") and cfg.MODEL.MASK_ON):
            return ret
        heads = [ret["mask_head"]]
        for _ in cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS[1:]:
            heads.append(super()._init_mask_head(cfg, input_shape)["mask_head"])  # a fresh head
        num_test_stages = cascade_head_arguments(cfg)["num_test_stages"] or len(heads)
        ret["mask_head"] = MaskHeadPerStage(heads, num_test_heads=num_test_stages)
        return ret

    def forward(self, images, features, proposals, targets=None):
        del images
        if not self.training:
            instances = self._forward_box(features, proposals)
            return self.forward_with_given_boxes(features, instances), {}
        if not targets:
            raise ValueError("CascadeRCNNROIHeads needs `targets` (ground truth) in training.")
        proposals = self.drop_ignored(proposals, targets)
        proposals = self.label_and_sample_proposals(*self._first_stage_inputs(proposals, targets))
        box_features = [features[f] for f in self.box_in_features]
        stages = self.run_stages(box_features, proposals, self.num_cascade_stages, targets)
        losses = self._stage_losses(stages)
        losses.update(self._mask_losses(self, features, [s.proposals for s in stages]))
        losses.update(self._forward_keypoint(features, proposals))
        return proposals, losses

    def _forward_box(self, features, proposals):
        """The detections of the first `num_test_stages` stages."""
        features = [features[f] for f in self.box_in_features]
        stages = self.run_stages(features, proposals, self.num_test_stages)
        return self.detect(stages, self.score(features, stages, self.test_scorer))[0]

    def run_stages(self, features, proposals, num_stages, targets=None) -> List[Stage]:
        """
        Run the first `num_stages` stages on `features` (one map per box_in_features), each
        on the boxes the previous one refined. In training, `proposals` come labelled and
        each later stage's boxes are labelled at its own IoU against `targets`.
        """
        stages = [self._stage(features, proposals, 0, num_stages)]
        if num_stages > 1 and not self.training:
            stages[0] = self.prune(stages[0], self.box_predictor[0])
        image_sizes = [p.image_size for p in proposals]
        for k in range(1, num_stages):
            previous = stages[-1]
            if self.training:
                proposals = self.label_stage(self, previous.refined, previous.proposals, k, targets)
            else:
                boxes = finite_or_zero(previous.refined)  # see nonfinite.py
                proposals = self._create_proposals_from_boxes(boxes, image_sizes)
            stages.append(self._stage(features, proposals, k, num_stages))
        return stages

    def score(self, features, stages: List[Stage], scorer) -> List[torch.Tensor]:
        """
        The class probabilities of the last of `stages`' boxes by `scorer` (see scoring.py),
        NaN in the rows that became non-finite at some stage, which the final NMS drops.
        """
        return nan_where_nonfinite(scorer(self, features, stages), stages)

    def detect(self, stages: List[Stage], scores: List[torch.Tensor]):
        """
        Per-class NMS (`final_nms`) of the last of `stages`' boxes with `scores`; returns the
        detections and, per image, the indices of the rows they come from among the finite ones.
        """
        predictor = self.box_predictor[len(stages) - 1]
        return self.final_nms(
            stages[-1].boxes,
            scores,
            [p.image_size for p in stages[0].proposals],
            predictor.test_score_thresh,
            predictor.test_nms_thresh,
            predictor.test_topk_per_image,
        )

    def _stage(self, features, proposals, k, num_stages) -> Stage:
        predictions = self._run_stage(features, proposals, k)
        if self.training and k == num_stages - 1:
            check_stage_outputs(k, num_stages, predictions, features)
            return Stage(predictions, proposals, None, None)  # feeds no stage, no detection
        boxes = self.box_predictor[k].predict_boxes(predictions, proposals)
        if self.training:
            check_stage_outputs(k, num_stages, [*predictions, *boxes], features)
        return Stage(
            predictions, proposals, boxes, self._boxes_handed_on(boxes, predictions, proposals)
        )

    def _run_stage(self, features, proposals, stage):
        box_features = self.box_pooler(features, [p.proposal_boxes for p in proposals])
        if self.training:
            # Every stage adds its full loss to the shared features; detectron2 scales their
            # gradient by 1/N so that the backbone gets one stage's worth.
            box_features = _ScaleGradient.apply(box_features, self.feature_gradient_scale)
        return self.box_predictor[stage](self.box_head[stage](box_features))

    def _boxes_of_one_class(self, boxes, predictions, proposals) -> List[torch.Tensor]:
        """Class-specific regression: a positive's ground-truth class in training, else the top class."""
        classes = predictions[0][:, :-1].argmax(dim=1)
        if self.training:
            gt_classes = cat([p.gt_classes for p in proposals])
            is_fg = (gt_classes >= 0) & (gt_classes < self.num_classes)
            classes = torch.where(is_fg, gt_classes, classes)
        rows = torch.arange(len(classes), device=classes.device)
        chosen = cat(boxes).view(len(classes), self.num_classes, 4)[rows, classes]
        return chosen.split([len(p) for p in proposals])

    def _stage_losses(self, stages):
        storage = get_event_storage()
        losses = {}
        for k, stage in enumerate(stages):
            with storage.name_scope(f"stage{k}"):
                stage_losses = self.box_predictor[k].losses(stage.predictions, stage.proposals)
            check_stage_losses(k, stage_losses)
            weight = self.stage_loss_weights[k]
            losses.update({f"{name}_stage{k}": v * weight for name, v in stage_losses.items()})
        return losses


def _as_given(proposals, targets):
    return proposals, targets


def _as_regressed(boxes, predictions, proposals):
    """Class-agnostic regression: each row already has one box."""
    return boxes


def _first_stage_mask_losses(heads, features, stage_proposals):
    """detectron2's single mask head learns from stage 1's sampled proposals."""
    return heads._forward_mask(features, stage_proposals[0])
