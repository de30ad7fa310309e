"""Cascade R-CNN ROI heads (Cai & Vasconcelos, CVPR 2018)."""
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec, batched_nms, cat
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import (
    ROI_HEADS_REGISTRY,
    StandardROIHeads,
    select_foreground_proposals,
)
from detectron2.modeling.roi_heads.box_head import build_box_head
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers, fast_rcnn_inference
from detectron2.modeling.sampling import subsample_labels
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import get_event_storage

from .config import (
    cascade_prune_nms_thresh,
    cascade_prune_topk,
    cascade_stage_settings,
    cascade_switch,
    cascade_test_settings,
)
from .mask_per_stage import MaskHeadPerStage
from .parallel_roi_align import parallelize_pooler


class _Stage(NamedTuple):
    """What one stage produced."""

    predictions: Tuple[torch.Tensor, torch.Tensor]  # class logits, box deltas
    proposals: List[Instances]  # its input boxes, per image
    # The boxes it regressed, per image (one per class if class-specific), and the one box
    # per row it hands to the next stage; None for the last stage in training.
    boxes: Optional[List[torch.Tensor]]
    refined: Optional[List[torch.Tensor]]


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
    distribution of boxes good enough for its threshold. At test time the boxes come
    from the last stage and the class scores from the stages together (TEST_SCORE).

    With class-specific regression, each box still hands ONE box to the next stage: in
    training a positive's ground-truth class's box, otherwise the box of its top-scoring
    foreground class (as mmdetection does). The detections instead take the last stage's
    box of every class, so that each class is reported with its own regression, as in
    Faster R-CNN.

    Parameter names follow detectron2's built-in `CascadeROIHeads`
    (`box_head.{k}`, `box_predictor.{k}`, `mask_head`), so its checkpoints load unchanged.
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
        test_score: str = "mean",
        num_test_stages: Optional[int] = None,
        resample: bool = False,
        test_prune_topk: int = 0,
        test_prune_nms_thresh: float = 1.0,
        **kwargs,
    ):
        """
        Args:
            box_heads, box_predictors, proposal_matchers, stage_loss_weights: one per
                stage. The first matcher labels the RPN proposals; matcher k labels
                the boxes refined by stage k-1.
            scale_feature_gradient: scale the gradient into the pooled features by
                1/num_stages, as detectron2 does.
            test_score: "mean", "mean_on_final" or "last" (see TEST_SCORE).
            num_test_stages: run only the first stages at test time; None runs all.
            resample: re-sample every stage's boxes, as stage 1 does (see RESAMPLE).
            test_prune_topk: at test time, only the top-k boxes of each image by stage-1
                foreground score go on to stages 2..N; 0 sends all (see TEST_PRUNE_TOPK).
            test_prune_nms_thresh: at test time, only the boxes that survive NMS at this
                IoU among stage 1's refined boxes go on; 1.0 sends all (before top-k).
            kwargs: as for `StandardROIHeads`, without `proposal_matcher`. A
                `MaskHeadPerStage` as `mask_head` gives each stage its own mask head.
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
        self.test_score = test_score
        self.num_test_stages = num_test_stages or self.num_cascade_stages
        self.resample = resample
        self.test_prune_topk = test_prune_topk
        self.test_prune_nms_thresh = test_prune_nms_thresh
        self.mask_per_stage = self.mask_on and isinstance(self.mask_head, MaskHeadPerStage)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        # Stage 1 labels proposals at IOUS[0] with its own matcher (see _init_box_head).
        del ret["proposal_matcher"]
        ret["scale_feature_gradient"] = cfg.MODEL.ROI_BOX_CASCADE_HEAD.SCALE_FEATURE_GRADIENT
        ret["test_score"], ret["num_test_stages"] = cascade_test_settings(cfg)
        ret["resample"] = cascade_switch(cfg, "RESAMPLE")
        ret["test_prune_topk"] = cascade_prune_topk(cfg)
        ret["test_prune_nms_thresh"] = cascade_prune_nms_thresh(cfg)
        return ret

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ious, reg_weights, loss_weights = cascade_stage_settings(cfg)
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
        _, num_test_stages = cascade_test_settings(cfg)
        ret["mask_head"] = MaskHeadPerStage(heads, num_test_heads=num_test_stages)
        return ret

    def forward(self, images, features, proposals, targets=None):
        del images
        if not self.training:
            instances = self._forward_box(features, proposals)
            return self.forward_with_given_boxes(features, instances), {}
        if not targets:
            raise ValueError("CascadeRCNNROIHeads needs `targets` (ground truth) in training.")
        if self._replaces_ground_truth:
            proposals = self.label_and_sample_proposals(*_flag_ground_truth(proposals, targets))
        else:
            proposals = self.label_and_sample_proposals(proposals, targets)
        losses, stage_proposals = self._forward_box(features, proposals, targets)
        if self.mask_per_stage:
            losses.update(self._mask_losses_per_stage(features, stage_proposals))
        else:
            # The single mask head trains on stage 1's sampled proposals, as in detectron2.
            losses.update(self._forward_mask(features, proposals))
        losses.update(self._forward_keypoint(features, proposals))
        return proposals, losses

    @property
    def _replaces_ground_truth(self) -> bool:
        """
        RESAMPLE with PROPOSAL_APPEND_GT: each stage drops the ground-truth boxes that the
        previous stage appended and regressed, and appends exact ones (mmdetection).
        """
        return self.resample and self.proposal_append_gt

    def _forward_box(self, features, proposals, targets=None):
        """
        Training: return the stages' losses, and each stage's labelled input boxes.
        Inference: return the detections of the first `num_test_stages` stages.
        """
        features = [features[f] for f in self.box_in_features]
        num_stages = self.num_cascade_stages if self.training else self.num_test_stages
        stages = self._run_stages(features, proposals, num_stages, targets)
        if self.training:
            return self._stage_losses(stages), [s.proposals for s in stages]
        return self._detect(features, stages, self.test_score)

    @torch.no_grad()
    def inference_by_stage(
        self, features: Dict[str, torch.Tensor], proposals: List[Instances]
    ) -> Tuple[List[Instances], Dict[str, List[Instances]]]:
        """
        Run the test-time stages once, and return what every stage and every ensemble
        of stages detects, to measure each stage without running the backbone per stage.

        Returns:
            detections: what `forward` returns at test time, with one more field,
                `stage_boxes` (R x (num_stages + 1) x 4): the proposal each detection
                started from (column 0), then the box each stage made of it (column k:
                the box stage k handed on; last column: the detection's box).
            sets: name -> detections per image. "k": stage k's boxes scored by stage k
                alone (TEST_STAGE k, TEST_SCORE "last"); "1~k" for k >= 2: stage k's
                boxes scored by stages 1..k as `ensemble_score` says (TEST_STAGE k,
                TEST_SCORE `ensemble_score`). They come out of the same code as a
                run with those settings, so they are the same detections.
        """
        if self.training:
            raise RuntimeError("inference_by_stage is for test time: call .eval() first.")
        box_features = [features[f] for f in self.box_in_features]
        stages = self._run_stages(box_features, proposals, self.num_test_stages)
        detections, rows = self._detect(box_features, stages, self.test_score, with_rows=True)
        for image, (instances, rows_per_image) in enumerate(zip(detections, rows)):
            instances.stage_boxes = self._stage_boxes_of(stages, image, rows_per_image, instances)
        detections = self.forward_with_given_boxes(features, detections)
        sets = {}
        for k in range(1, len(stages) + 1):
            sets[str(k)] = self._detect(box_features, stages[:k], "last")
        for k in range(2, len(stages) + 1):
            sets[f"1~{k}"] = self._detect(box_features, stages[:k], self.ensemble_score)
        return detections, sets

    @property
    def ensemble_score(self) -> str:
        """
        How `inference_by_stage` scores the ensembles 1~k: as TEST_SCORE says, unless that
        is "last", which is no ensemble; then "mean", detectron2's default.
        """
        return "mean" if self.test_score == "last" else self.test_score

    def _stage_boxes_of(self, stages, image, rows, detections) -> torch.Tensor:
        """
        The path of every detection of one image through the stages: its proposal, the box
        each stage handed to the next, and the last stage's box of the detected class.
        """
        columns = [stages[0].proposals[image].proposal_boxes.tensor[rows]]
        columns += [stage.refined[image][rows] for stage in stages[:-1]]
        last = stages[-1].boxes[image][rows]
        if last.shape[1] > 4:  # class-specific regression
            per_class = last.view(len(rows), last.shape[1] // 4, 4)
            last = per_class[torch.arange(len(rows), device=last.device), detections.pred_classes]
        columns.append(last)
        stage_boxes = Boxes(torch.stack(columns, dim=1).view(-1, 4))
        stage_boxes.clip(detections.image_size)  # as the detections' boxes are
        return stage_boxes.tensor.view(len(rows), len(columns), 4)

    def _run_stages(self, features, proposals, num_stages, targets=None) -> List[_Stage]:
        """Run the first `num_stages` stages, each on the boxes the previous one refined."""
        stages = []
        for k in range(num_stages):
            if k > 0:
                proposals = self._next_stage_proposals(stages[-1].refined, proposals, k, targets)
            predictions = self._run_stage(features, proposals, k)
            if self.training and k == num_stages - 1:
                # The last stage's boxes feed no stage and no detection in training.
                stages.append(_Stage(predictions, proposals, None, None))
                break
            boxes = self.box_predictor[k].predict_boxes(predictions, proposals)
            refined = self._boxes_for_next_stage(boxes, predictions, proposals)
            stages.append(_Stage(predictions, proposals, boxes, refined))
            if k == 0 and num_stages > 1 and not self.training and self._prunes:
                stages[0] = self._prune(stages[0])
                proposals = stages[0].proposals
        return stages

    @property
    def _prunes(self) -> bool:
        return self.test_prune_topk > 0 or self.test_prune_nms_thresh < 1.0

    def _prune(self, stage: _Stage) -> _Stage:
        """
        Keep the rows of each image that survive NMS at TEST_PRUNE_NMS_THRESH among the
        boxes `stage` refined, then the TEST_PRUNE_TOPK of them with the highest foreground
        score (the best non-background class probability), in their original order. Later
        stages then see only those rows, so the rows dropped here get no score from them
        and are dropped from the detections: with TEST_SCORE "mean" a row's score is the
        mean over every stage, and a stage-1 score alone would not be comparable.
        """
        probs = self.box_predictor[0].predict_probs(stage.predictions, stage.proposals)
        keep = []
        for probs_per_image, refined in zip(probs, stage.refined):
            fg_scores, top_classes = probs_per_image[:, :-1].max(dim=1)
            if self.test_prune_nms_thresh < 1.0:
                # Sorted by score, so the top-k below is a slice.
                rows = batched_nms(refined, fg_scores, top_classes, self.test_prune_nms_thresh)
                if self.test_prune_topk > 0:
                    rows = rows[: self.test_prune_topk]
            else:
                # No Python branch on the number of rows: tracing would fix it to the traced
                # image's, and an exported model would fail on images with fewer than topk.
                k = torch.clamp(torch.as_tensor(len(fg_scores)), max=self.test_prune_topk)
                rows = fg_scores.topk(k).indices
            keep.append(rows.sort().values)
        flat = cat([rows + start for rows, start in zip(keep, _offsets(probs))])
        boxes = [b[rows] for b, rows in zip(stage.boxes, keep)]
        refined = boxes if stage.refined is stage.boxes else [
            r[rows] for r, rows in zip(stage.refined, keep)
        ]
        return _Stage(
            predictions=tuple(x[flat] for x in stage.predictions),
            proposals=[p[rows] for p, rows in zip(stage.proposals, keep)],
            boxes=boxes,
            refined=refined,
        )

    def _detect(self, features, stages, test_score, with_rows=False):
        """
        Detections from the boxes of the last of `stages`, scored as `test_score` says.
        With `with_rows`, also per image the row (input box) that each detection comes from.
        """
        boxes = stages[-1].boxes
        scores = self._test_scores(features, stages, test_score)
        last = self.box_predictor[len(stages) - 1]
        instances, kept = fast_rcnn_inference(
            boxes,
            scores,
            [p.image_size for p in stages[0].proposals],
            last.test_score_thresh,
            last.test_nms_thresh,
            last.test_topk_per_image,
        )
        if not with_rows:
            return instances
        # fast_rcnn_inference numbers the rows after dropping those with non-finite boxes
        # or scores; number them as the stages do.
        rows = [
            (torch.isfinite(b).all(dim=1) & torch.isfinite(s).all(dim=1)).nonzero()[k, 0]
            for b, s, k in zip(boxes, scores, kept)
        ]
        return instances, rows

    def _run_stage(self, features, proposals, stage):
        box_features = self.box_pooler(features, [p.proposal_boxes for p in proposals])
        if self.training and self.scale_feature_gradient:
            # Every stage adds its full loss to the shared features; scaling by
            # 1/N keeps the backbone's gradient at one stage's worth.
            box_features = _ScaleGradient.apply(box_features, 1.0 / self.num_cascade_stages)
        box_features = self.box_head[stage](box_features)
        return self.box_predictor[stage](box_features)

    def _boxes_for_next_stage(self, boxes, predictions, proposals) -> List[torch.Tensor]:
        """
        The one box per row that a stage hands to the next. With class-specific regression:
        a positive's ground-truth class in training, else the top-scoring foreground class.
        """
        logits, deltas = predictions
        if deltas.shape[1] == 4:  # class-agnostic: already one box per row
            return boxes
        classes = logits[:, :-1].argmax(dim=1)
        if self.training:
            gt_classes = cat([p.gt_classes for p in proposals])
            is_fg = (gt_classes >= 0) & (gt_classes < self.num_classes)
            classes = torch.where(is_fg, gt_classes, classes)
        rows = torch.arange(len(classes), device=classes.device)
        chosen = cat(boxes).view(len(classes), self.num_classes, 4)[rows, classes]
        return chosen.split([len(p) for p in proposals])

    def _next_stage_proposals(self, boxes, previous, stage, targets) -> List[Instances]:
        """The boxes stage `stage` starts from; in training, labelled at its IoU."""
        if self.training and self._replaces_ground_truth:
            boxes = [b[~p.is_ground_truth] for b, p in zip(boxes, previous)]
        proposals = self._proposals_from_boxes(boxes, [p.image_size for p in previous])
        if not self.training:
            return proposals
        if self.resample:
            proposals = self._resample(proposals, stage, targets)
        else:
            proposals = self._label_boxes(proposals, stage, targets)
        self._log_sample_counts(proposals, stage)
        return proposals

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
    def _resample(self, proposals, stage, targets) -> List[Instances]:
        """Label and sample a stage's boxes as `label_and_sample_proposals` does for stage 1."""
        if self.proposal_append_gt:
            proposals = _append_ground_truth(proposals, targets)
        sampled = []
        for proposals_per_image in self._label_boxes(proposals, stage, targets):
            fg_idxs, bg_idxs = subsample_labels(
                proposals_per_image.gt_classes,
                self.batch_size_per_image,
                self.positive_fraction,
                self.num_classes,
            )
            sampled.append(proposals_per_image[torch.cat([fg_idxs, bg_idxs])])
        return sampled

    @torch.no_grad()
    def _label_boxes(self, proposals, stage, targets) -> List[Instances]:
        """Match boxes to ground truth at this stage's IoU."""
        for proposals_per_image, targets_per_image in zip(proposals, targets):
            iou = pairwise_iou(targets_per_image.gt_boxes, proposals_per_image.proposal_boxes)
            matched_idxs, is_fg = self.proposal_matchers[stage](iou)
            if len(targets_per_image) > 0:
                gt_classes = targets_per_image.gt_classes[matched_idxs]
                gt_classes[is_fg == 0] = self.num_classes
                gt_boxes = targets_per_image.gt_boxes[matched_idxs]
                if self.mask_per_stage:
                    # This stage's own mask head learns from its positives.
                    proposals_per_image.gt_masks = targets_per_image.gt_masks[matched_idxs]
            else:
                # No ground truth: all background; the boxes are never regressed.
                gt_classes = torch.full_like(matched_idxs, self.num_classes)
                gt_boxes = Boxes(iou.new_zeros((len(proposals_per_image), 4)))
            proposals_per_image.gt_classes = gt_classes
            proposals_per_image.gt_boxes = gt_boxes
        return proposals

    def _log_sample_counts(self, proposals, stage):
        num_fg = [int((p.gt_classes < self.num_classes).sum()) for p in proposals]
        num_bg = [len(p) - fg for p, fg in zip(proposals, num_fg)]
        storage = get_event_storage()
        storage.put_scalar(f"stage{stage}/roi_head/num_fg_samples", sum(num_fg) / len(num_fg))
        storage.put_scalar(f"stage{stage}/roi_head/num_bg_samples", sum(num_bg) / len(num_bg))

    def _stage_losses(self, stages) -> Dict[str, torch.Tensor]:
        storage = get_event_storage()
        losses = {}
        for k, stage in enumerate(stages):
            with storage.name_scope(f"stage{k}"):
                stage_losses = self.box_predictor[k].losses(stage.predictions, stage.proposals)
            weight = self.stage_loss_weights[k]
            losses.update({f"{name}_stage{k}": v * weight for name, v in stage_losses.items()})
        return losses

    def _test_scores(self, features, stages, test_score):
        """Class probabilities of the last stage's boxes, as `test_score` (TEST_SCORE) says."""
        if test_score == "last":
            return self.box_predictor[len(stages) - 1].predict_probs(
                stages[-1].predictions, stages[-1].proposals
            )
        if test_score == "mean_on_final":
            image_sizes = [p.image_size for p in stages[0].proposals]
            probs_per_stage = self._probs_on_boxes(
                features, stages[-1].refined, image_sizes, len(stages)
            )
        else:
            probs_per_stage = [
                self.box_predictor[k].predict_probs(stage.predictions, stage.proposals)
                for k, stage in enumerate(stages)
            ]
        return [sum(probs) * (1.0 / len(probs_per_stage)) for probs in zip(*probs_per_stage)]

    def _probs_on_boxes(self, features, boxes, image_sizes, num_stages):
        """
        The paper's ensemble: the classifiers of the first `num_stages` score the same
        boxes. With class-specific regression, a row's box is its top-scoring class's.
        """
        proposals = self._proposals_from_boxes(boxes, image_sizes)
        box_features = self.box_pooler(features, [p.proposal_boxes for p in proposals])
        return [
            self.box_predictor[k].predict_probs(
                self.box_predictor[k](self.box_head[k](box_features)), proposals
            )
            for k in range(num_stages)
        ]

    def _mask_losses_per_stage(self, features, stage_proposals) -> Dict[str, torch.Tensor]:
        """Mask head k learns from stage k's positives, weighted like stage k's box losses."""
        losses = {}
        for k, proposals in enumerate(stage_proposals):
            positives, _ = select_foreground_proposals(proposals, self.num_classes)
            if self.mask_pooler is None:
                mask_features = {f: features[f] for f in self.mask_in_features}
            else:
                mask_features = self.mask_pooler(
                    [features[f] for f in self.mask_in_features],
                    [p.proposal_boxes for p in positives],
                )
            loss = self.mask_head[k](mask_features, positives)["loss_mask"]
            losses[f"loss_mask_stage{k}"] = loss * self.stage_loss_weights[k]
        return losses


def _offsets(tensors: List[torch.Tensor]) -> List[int]:
    """Where each of `tensors` starts in their concatenation."""
    offsets, start = [], 0
    for t in tensors:
        offsets.append(start)
        start += len(t)
    return offsets


def _flag_ground_truth(proposals: List[Instances], targets: List[Instances]):
    """
    Copies of `proposals` and `targets` with a field `is_ground_truth`: False on the
    proposals, True on the targets. `add_ground_truth_to_proposals` builds the boxes it
    appends from the targets' fields, so the flag reaches them and survives sampling.
    Unlike comparing coordinates, it cannot mistake an RPN box that equals a gt box.
    """
    return (
        [_flagged(p, p.proposal_boxes, False) for p in proposals],
        [_flagged(t, t.gt_boxes, True) for t in targets],
    )


def _append_ground_truth(proposals: List[Instances], targets: List[Instances]):
    """Append each image's ground-truth boxes to its proposals, flagged as above."""
    appended = []
    for p, t in zip(proposals, targets):
        gt = Instances(t.image_size, proposal_boxes=t.gt_boxes)
        appended.append(
            Instances.cat([_flagged(p, p.proposal_boxes, False), _flagged(gt, t.gt_boxes, True)])
        )
    return appended


def _flagged(instances: Instances, boxes: Boxes, is_ground_truth: bool) -> Instances:
    """A shallow copy of `instances`, every row flagged; `boxes` are its boxes."""
    flagged = Instances(instances.image_size, **instances.get_fields())
    flagged.is_ground_truth = torch.full(
        (len(boxes),), is_ground_truth, dtype=torch.bool, device=boxes.device
    )
    return flagged
