"""Cascade R-CNN ROI heads (Cai & Vasconcelos, CVPR 2018): detectron2's cascade, with options."""

from functools import partial
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import (
    ROI_HEADS_REGISTRY,
    CascadeROIHeads,
    select_foreground_proposals,
)
from detectron2.modeling.roi_heads.box_head import build_box_head
from detectron2.modeling.roi_heads.cascade_rcnn import _ScaleGradient
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import ImageList, Instances
from detectron2.utils.events import get_event_storage

from ...config import (
    OPTION_ARGUMENTS,
    check_head_arguments,
    head_arguments,
    option_value,
    options_docstring,
    stage_settings,
)
from ...errors import ConfigError
from ...layers import parallelize_pooler
from .detection_inference import detection_inference
from .mask_per_stage import MaskHeadPerStage
from .nonfinite import check_stage_losses, check_stage_outputs, finite_or_zero, nan_where_nonfinite
from .pruning import StagePruner, keep_all
from .sampling import IgnoreRegionFilter, StageSampler, flag_ground_truth, keep_all_proposals
from .scoring import SCORERS, Scorer

__all__ = ["CascadeRCNNROIHeads", "Stage"]


class Stage(NamedTuple):
    """What one stage produced; the lists hold one entry per image."""

    predictions: Tuple[torch.Tensor, torch.Tensor]  # class logits, box deltas
    proposals: List[Instances]  # its input boxes
    # Every box it regressed: R x 4, or R x 4K with class-specific regression (a box per
    # class). None for the last stage in training, which feeds no stage and no detection.
    regressed_boxes: Optional[List[torch.Tensor]]
    # The one box per row (R x 4) that the next stage takes as its input.
    next_stage_boxes: Optional[List[torch.Tensor]]


@ROI_HEADS_REGISTRY.register()
class CascadeRCNNROIHeads(CascadeROIHeads):
    __doc__ = """
    detectron2's `CascadeROIHeads` with the options of mmdetection and the paper; with their
    defaults it gives the built-in's outputs, losses and gradients.

    Stage k is trained on the detached boxes that stage k-1 regressed, relabelled at its
    own IoU, so each stage sees boxes good enough for its threshold. At test time the boxes
    come from the last stage and the class scores from the stages together (TEST_SCORE).

    With class-specific regression each row still hands ONE box to the next stage: in
    training a positive's ground-truth class's box, otherwise the box of its top-scoring
    foreground class (as mmdetection does). The detections take the last stage's box of
    every class, so that each class is reported with its own regression.

    The options are decided at construction, into what the stages call: `_label_next_stage`
    and `_mask_losses` (training), `prune`, `scorer` and `detection_inference` (inference).

    Args (as for detectron2's `CascadeROIHeads`): box_in_features, box_pooler, and one
    box head, predictor and matcher per stage (box_heads, box_predictors,
    proposal_matchers); the first matcher labels the RPN proposals, matcher k the boxes
    stage k-1 regressed. Other keyword arguments go to `StandardROIHeads`; a
    `MaskHeadPerStage` as `mask_head` gives each stage its own mask head.

    """ + options_docstring()

    @configurable
    def __init__(
        self,
        *,
        box_in_features: List[str],
        box_pooler: ROIPooler,
        box_heads: List[nn.Module],
        box_predictors: List[nn.Module],
        proposal_matchers: List[Matcher],
        **kwargs,
    ):
        given = {name: kwargs.pop(name) for name in OPTION_ARGUMENTS if name in kwargs}
        options = check_head_arguments(box_heads, box_predictors, proposal_matchers, given)
        super().__init__(
            box_in_features=box_in_features,
            box_pooler=box_pooler,
            box_heads=box_heads,
            box_predictors=box_predictors,
            proposal_matchers=proposal_matchers,
            **kwargs,
        )
        num_stages = len(box_heads)
        self.stage_loss_weights: List[float] = options["stage_loss_weights"] or [1.0] * num_stages
        self.feature_gradient_scale = 1.0 / num_stages if options["scale_feature_gradient"] else 1.0
        self.num_test_stages: int = options["num_test_stages"] or num_stages

        # Training.
        thresh = options["ignore_iof_thresh"]
        self.drop_ignored = IgnoreRegionFilter(thresh) if thresh >= 0 else keep_all_proposals
        mask_per_stage = self.mask_on and isinstance(self.mask_head, MaskHeadPerStage)
        self._first_stage_inputs = _as_given
        self._label_next_stage = self._match_at_stage_iou
        if options["resample"] or mask_per_stage:
            # RESAMPLE with PROPOSAL_APPEND_GT replaces, at every stage, the ground-truth
            # boxes the previous stage appended and regressed by exact ones; the first
            # stage's proposals carry the flag that says which those are.
            sampler = StageSampler(
                self.num_classes,
                self.proposal_matchers,
                make_proposals=self._create_proposals_from_boxes,
                drop_ignored=self.drop_ignored,
                with_masks=mask_per_stage,
                resample=options["resample"],
                batch_size_per_image=self.batch_size_per_image,
                positive_fraction=self.positive_fraction,
                append_ground_truth=self.proposal_append_gt,
            )
            self._label_next_stage = sampler
            if sampler.replaces_ground_truth:
                self._first_stage_inputs = flag_ground_truth
        self._mask_losses = (
            self._mask_losses_per_stage if mask_per_stage else self._first_stage_mask_losses
        )
        class_specific = any(p.bbox_pred.out_features > 4 for p in box_predictors)
        self._boxes_for_next_stage = self._one_box_per_row if class_specific else _as_regressed

        # Inference.
        topk, nms_thresh = options["test_prune_topk"], options["test_prune_nms_thresh"]
        self.prune = StagePruner(topk, nms_thresh) if topk > 0 or nms_thresh < 1.0 else keep_all
        self.scorer: Scorer = SCORERS[options["test_score"]]
        self.detection_inference = detection_inference(
            options["test_nms_method"],
            options["test_soft_nms_sigma"],
            options["test_soft_nms_min_score"],
        )

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret.update(head_arguments(cfg))
        return ret

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ious, reg_weights = stage_settings(cfg)
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
        if option_value(cfg, "PARALLEL_CPU_ROI_ALIGN"):
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
        }

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        ret = super()._init_mask_head(cfg, input_shape)
        if ret.get("mask_pooler") is not None and option_value(cfg, "PARALLEL_CPU_ROI_ALIGN"):
            ret["mask_pooler"] = parallelize_pooler(ret["mask_pooler"])
        if not (option_value(cfg, "MASK_PER_STAGE") and cfg.MODEL.MASK_ON):
            return ret
        heads = [ret["mask_head"]]
        for _ in cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS[1:]:
            heads.append(super()._init_mask_head(cfg, input_shape)["mask_head"])  # a fresh head
        num_test_heads = option_value(cfg, "TEST_STAGE") or len(heads)
        ret["mask_head"] = MaskHeadPerStage(heads, num_test_heads=num_test_heads)
        return ret

    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
    ) -> Tuple[List[Instances], Dict[str, torch.Tensor]]:
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
        losses.update(self._mask_losses(features, stages))
        losses.update(self._forward_keypoint(features, proposals))
        return proposals, losses

    def _forward_box(self, features, proposals):
        """The detections of the first `num_test_stages` stages."""
        features = [features[f] for f in self.box_in_features]
        stages = self.run_stages(features, proposals, self.num_test_stages)
        return self.detect(stages, self.score(features, stages, self.scorer))[0]

    def run_stages(
        self,
        features: List[torch.Tensor],
        proposals: List[Instances],
        num_stages: int,
        targets: Optional[List[Instances]] = None,
    ) -> List[Stage]:
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
                proposals = self._label_next_stage(
                    previous.next_stage_boxes, previous.proposals, k, targets
                )
            else:
                boxes = finite_or_zero(previous.next_stage_boxes)  # see nonfinite.py
                proposals = self._create_proposals_from_boxes(boxes, image_sizes)
            stages.append(self._stage(features, proposals, k, num_stages))
        return stages

    def score(
        self, features: List[torch.Tensor], stages: List[Stage], scorer: Scorer
    ) -> List[torch.Tensor]:
        """
        The class probabilities of the last of `stages`' boxes by `scorer` (see scoring.py),
        NaN in the rows that became non-finite at some stage, which the final NMS drops.
        """
        rescore = partial(self._scored_on_last_boxes, features)
        return nan_where_nonfinite(scorer(stages, self.box_predictor, rescore), stages)

    def detect(
        self, stages: List[Stage], scores: List[torch.Tensor]
    ) -> Tuple[List[Instances], List[torch.Tensor]]:
        """
        Per-class NMS (`detection_inference`) of the last of `stages`' boxes with `scores`;
        returns the detections and, per image, the indices of the rows they come from among
        the finite ones.
        """
        predictor = self.box_predictor[len(stages) - 1]
        return self.detection_inference(
            stages[-1].regressed_boxes,
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
            return Stage(predictions, proposals, None, None)
        boxes = self.box_predictor[k].predict_boxes(predictions, proposals)
        if self.training:
            check_stage_outputs(k, num_stages, [*predictions, *boxes], features)
        next_boxes = self._boxes_for_next_stage(boxes, predictions, proposals)
        return Stage(predictions, proposals, boxes, next_boxes)

    def _run_stage(self, features, proposals, stage):
        box_features = self.box_pooler(features, [p.proposal_boxes for p in proposals])
        if self.training:
            # Every stage adds its full loss to the shared features; detectron2 scales their
            # gradient by 1/N so that the backbone gets one stage's worth.
            box_features = _ScaleGradient.apply(box_features, self.feature_gradient_scale)
        return self.box_predictor[stage](self.box_head[stage](box_features))

    def _scored_on_last_boxes(self, features, stages: List[Stage]) -> List[Stage]:
        """Every one of `stages`' classifiers run on the boxes the last of them hands on."""
        image_sizes = [p.image_size for p in stages[0].proposals]
        boxes = finite_or_zero(stages[-1].next_stage_boxes)
        proposals = self._create_proposals_from_boxes(boxes, image_sizes)
        box_features = self.box_pooler(features, [p.proposal_boxes for p in proposals])
        return [
            Stage(self.box_predictor[k](self.box_head[k](box_features)), proposals, None, None)
            for k in range(len(stages))
        ]

    def _match_at_stage_iou(self, boxes, previous, stage, targets) -> List[Instances]:
        """detectron2's labelling: every box of `boxes`, matched at stage `stage`'s IoU."""
        proposals = self._create_proposals_from_boxes(boxes, [p.image_size for p in previous])
        return self._match_and_label_boxes(self.drop_ignored(proposals, targets), stage, targets)

    def _one_box_per_row(self, boxes, predictions, proposals) -> List[torch.Tensor]:
        """Class-specific: a positive's ground-truth class's box in training, else the top one's."""
        classes = predictions[0][:, :-1].argmax(dim=1)
        if self.training:
            gt_classes = cat([p.gt_classes for p in proposals])
            is_fg = (gt_classes >= 0) & (gt_classes < self.num_classes)
            classes = torch.where(is_fg, gt_classes, classes)
        rows = torch.arange(len(classes), device=classes.device)
        chosen = cat(boxes).view(len(classes), self.num_classes, 4)[rows, classes]
        return chosen.split([len(p) for p in proposals])

    def _stage_losses(self, stages) -> Dict[str, torch.Tensor]:
        storage = get_event_storage()
        losses = {}
        for k, stage in enumerate(stages):
            with storage.name_scope(f"stage{k}"):
                stage_losses = self.box_predictor[k].losses(stage.predictions, stage.proposals)
            check_stage_losses(k, stage_losses)
            weight = self.stage_loss_weights[k]
            losses.update({f"{name}_stage{k}": v * weight for name, v in stage_losses.items()})
        return losses

    def _first_stage_mask_losses(self, features, stages) -> Dict[str, torch.Tensor]:
        """detectron2's single mask head learns from stage 1's sampled proposals."""
        return self._forward_mask(features, stages[0].proposals)

    def _mask_losses_per_stage(self, features, stages) -> Dict[str, torch.Tensor]:
        """Mask head k learns from stage k's positives, weighted like stage k's box losses."""
        positives = [select_foreground_proposals(s.proposals, self.num_classes)[0] for s in stages]
        pooled = [self._mask_features(features, p) for p in positives]
        return self.mask_head.losses(pooled, positives, self.stage_loss_weights)

    def _mask_features(self, features, instances):
        """The mask head's input for `instances`' proposal boxes, as `_forward_mask` pools it."""
        if self.mask_pooler is None:
            return {f: features[f] for f in self.mask_in_features}
        boxes = [x.proposal_boxes for x in instances]
        return self.mask_pooler([features[f] for f in self.mask_in_features], boxes)


def _as_given(proposals, targets):
    return proposals, targets


def _as_regressed(boxes, predictions, proposals):
    """Class-agnostic regression: each row already has one box."""
    return boxes
