"""
The training inputs of stages 2..N: the boxes the previous stage regressed, labelled at
the stage's own IoU. detectron2 labels them and keeps every one (the head's
`_match_at_stage_iou`); `StageSampler` adds what RESAMPLE and MASK_PER_STAGE need. At every
stage, stage 1 included, `IgnoreRegionFilter` first drops the boxes inside crowd regions
(IGNORE_IOF_THRESH).
"""

from typing import Callable, List, Sequence, Tuple

import torch

from detectron2.modeling.matcher import Matcher
from detectron2.modeling.sampling import subsample_labels
from detectron2.structures import Boxes, Instances, pairwise_ioa, pairwise_iou
from detectron2.utils.events import get_event_storage

__all__ = [
    "StageSampler",
    "flag_ground_truth",
    "IgnoreRegionFilter",
    "keep_all_proposals",
]


class IgnoreRegionFilter:
    """
    Drops the boxes whose intersection over their own area with one of the image's crowd
    regions (`targets[i].ignore_regions`, see data/ignore_regions.py) exceeds `iof_thresh`:
    such a box is neither a positive nor a negative, so it is not sampled either. The crowd
    regions must come from a mapper that keeps them (CheckedDatasetMapper(keep_crowd_regions)).
    """

    def __init__(self, iof_thresh: float):
        self.iof_thresh = iof_thresh

    @torch.no_grad()
    def __call__(self, proposals: List[Instances], targets: List[Instances]) -> List[Instances]:
        kept = []
        for p, t in zip(proposals, targets):
            regions = t.ignore_regions.boxes if t.has("ignore_regions") else None
            if regions is None or len(regions) == 0:
                kept.append(p)
                continue
            iof = pairwise_ioa(regions, p.proposal_boxes).max(dim=0).values
            kept.append(p[iof <= self.iof_thresh])
        return kept


def keep_all_proposals(proposals, targets):
    """IGNORE_IOF_THRESH < 0: nothing is ignored (detectron2)."""
    return proposals


class StageSampler:
    """
    Labels a later stage's boxes as detectron2 does, and

    * with `with_masks`, gives each box its matched ground truth's mask, for that stage's own
      mask head (MASK_PER_STAGE);
    * with `resample`, samples `batch_size_per_image` of them at `positive_fraction`, as
      stage 1 is sampled (RESAMPLE, mmdetection). With `append_ground_truth`, the ground-truth
      boxes the previous stage appended and regressed are replaced by exact ones: that stage's
      proposals must carry the `is_ground_truth` flag of `flag_ground_truth`.
    """

    def __init__(
        self,
        num_classes: int,
        matchers: Sequence[Matcher],
        *,
        make_proposals: Callable[[List[torch.Tensor], List[Tuple[int, int]]], List[Instances]],
        drop_ignored: Callable[[List[Instances], List[Instances]], List[Instances]],
        with_masks: bool,
        resample: bool,
        batch_size_per_image: int,
        positive_fraction: float,
        append_ground_truth: bool,
    ):
        """
        Args:
            matchers: one per stage; stage k's labels its boxes.
            make_proposals: boxes and image sizes -> proposals, as the head makes them.
            drop_ignored: proposals and targets -> the proposals not in crowd regions.
        """
        self.num_classes = num_classes
        self.matchers = matchers
        self.make_proposals = make_proposals
        self.drop_ignored = drop_ignored
        self.with_masks = with_masks
        self.resample = resample
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.replaces_ground_truth = resample and append_ground_truth

    @torch.no_grad()
    def __call__(self, boxes, previous, stage, targets) -> List[Instances]:
        """Stage `stage`'s proposals: `boxes`, one tensor per image of `previous`, labelled."""
        if self.replaces_ground_truth:
            boxes = [b[~p.is_ground_truth] for b, p in zip(boxes, previous)]
        proposals = self.make_proposals(boxes, [p.image_size for p in previous])
        proposals = self.drop_ignored(proposals, targets)
        if self.replaces_ground_truth:
            proposals = _append_ground_truth(proposals, targets)
        matcher = self.matchers[stage]
        proposals = [self._label(p, t, matcher) for p, t in zip(proposals, targets)]
        if self.resample:
            proposals = [self._sample(p) for p in proposals]
        _log_sample_counts(proposals, stage, self.num_classes)
        return proposals

    def _label(self, proposals: Instances, targets: Instances, matcher) -> Instances:
        iou = pairwise_iou(targets.gt_boxes, proposals.proposal_boxes)
        matched_idxs, is_fg = matcher(iou)
        if len(targets) > 0:
            gt_classes = targets.gt_classes[matched_idxs]
            gt_classes[is_fg == 0] = self.num_classes
            proposals.gt_boxes = targets.gt_boxes[matched_idxs]
            if self.with_masks:
                proposals.gt_masks = targets.gt_masks[matched_idxs]
        else:
            # No ground truth: all background; the boxes are never regressed.
            gt_classes = torch.full_like(matched_idxs, self.num_classes)
            proposals.gt_boxes = Boxes(iou.new_zeros((len(proposals), 4)))
        proposals.gt_classes = gt_classes
        return proposals

    def _sample(self, proposals: Instances) -> Instances:
        fg_idxs, bg_idxs = subsample_labels(
            proposals.gt_classes,
            self.batch_size_per_image,
            self.positive_fraction,
            self.num_classes,
        )
        return proposals[torch.cat([fg_idxs, bg_idxs])]


def _log_sample_counts(proposals, stage, num_classes):
    """The scalars detectron2's `_match_and_label_boxes` logs."""
    num_fg = [int((p.gt_classes < num_classes).sum()) for p in proposals]
    num_bg = [len(p) - fg for p, fg in zip(proposals, num_fg)]
    storage = get_event_storage()
    storage.put_scalar(f"stage{stage}/roi_head/num_fg_samples", sum(num_fg) / len(num_fg))
    storage.put_scalar(f"stage{stage}/roi_head/num_bg_samples", sum(num_bg) / len(num_bg))


def flag_ground_truth(proposals: List[Instances], targets: List[Instances]):
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
