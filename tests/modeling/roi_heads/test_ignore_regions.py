"""
IGNORE_IOF_THRESH: in training, at every stage, a box whose intersection over its own area
with a crowd region exceeds the threshold is ignored: it is neither positive nor negative,
and is not sampled. Checked on boxes of known overlap.
"""

import pytest
import torch

from detectron2.structures import Boxes, pairwise_ioa
from detectron2.utils.events import EventStorage

from projects.cascade.data.ignore_regions import IgnoreRegions
from projects.cascade.modeling.roi_heads.sampling import IgnoreRegionFilter
from tests.helpers import (
    build,
    proposals_of,
    random_boxes,
    record_stage_inputs,
    run_heads,
    synthetic_batch,
    tiny_cfg,
)

REGION = [0.0, 0.0, 50.0, 50.0]


def test_filter_on_known_overlaps():
    boxes = torch.tensor(
        [
            [10, 10, 20, 20],  # inside: IoF 1
            [40, 40, 60, 60],  # a quarter inside: IoF 0.25
            [100, 100, 120, 120],  # outside
            [0, 0, 100, 50],  # half inside: IoF 0.5, not above the threshold
        ],
        dtype=torch.float32,
    )
    batch = synthetic_batch(sizes=((128, 160),))
    targets = [batch[0]["instances"]]
    targets[0].ignore_regions = IgnoreRegions(Boxes(torch.tensor([REGION])), len(targets[0]))
    (kept,) = IgnoreRegionFilter(0.5)(proposals_of(batch, [boxes]), targets)
    assert kept.proposal_boxes.tensor.tolist() == boxes[1:].tolist()
    (kept,) = IgnoreRegionFilter(0.2)(proposals_of(batch, [boxes]), targets)
    assert kept.proposal_boxes.tensor.tolist() == boxes[2:3].tolist()
    # Images without crowd regions keep every box.
    targets[0].remove("ignore_regions")
    (kept,) = IgnoreRegionFilter(0.2)(proposals_of(batch, [boxes]), targets)
    assert len(kept) == 4


def _batch_with_crowd():
    batch = synthetic_batch()
    for b in batch:
        b["instances"].ignore_regions = IgnoreRegions(
            Boxes(torch.tensor([REGION])), len(b["instances"])
        )
    return batch


def _inside_and_elsewhere(batch):
    """Per image: 10 boxes inside the crowd region and 20 random ones."""
    g = torch.Generator().manual_seed(3)
    inside = [
        torch.cat(
            [torch.rand(10, 2, generator=g) * 20, 30 + torch.rand(10, 2, generator=g) * 20], 1
        )
        for _ in batch
    ]
    return [torch.cat([a, b]) for a, b in zip(inside, random_boxes(batch, seed=2, count=20))]


@pytest.mark.parametrize(
    "options",
    [{}, {"RESAMPLE": True}, {"MASK_PER_STAGE": True}],
    ids=["defaults", "RESAMPLE", "MASK_PER_STAGE"],
)
def test_no_stage_trains_on_a_box_inside_a_crowd(monkeypatch, options):
    def max_iof(thresh):
        model = build(
            tiny_cfg(mask=bool(options.get("MASK_PER_STAGE")), IGNORE_IOF_THRESH=thresh, **options)
        )
        seen = record_stage_inputs(monkeypatch, model.roi_heads)
        batch = _batch_with_crowd()
        if options.get("MASK_PER_STAGE"):
            batch = synthetic_batch(with_masks=True)
            for b in batch:
                b["instances"].ignore_regions = IgnoreRegions(
                    Boxes(torch.tensor([REGION])), len(b["instances"])
                )
        with EventStorage():
            losses, _ = run_heads(
                model, batch, proposals_of(batch, _inside_and_elsewhere(batch)), train=True
            )
        assert all(torch.isfinite(v) for v in losses.values())
        assert len(seen) == 3, "every stage ran"
        region = Boxes(torch.tensor([REGION]))
        return max(
            float(pairwise_ioa(region, p.proposal_boxes).max())
            for stage_inputs in seen
            for p in stage_inputs
            if len(p)
        )

    assert max_iof(0.5) <= 0.5
    assert max_iof(-1.0) > 0.99, "without IGNORE_IOF_THRESH, the boxes inside are trained on"


def test_ignored_boxes_are_neither_positives_nor_negatives():
    """Stage 1's sample counts shrink by the boxes inside the crowd region, and by no other."""
    counts = {}
    batch = _batch_with_crowd()
    boxes = _inside_and_elsewhere(batch)
    region = Boxes(torch.tensor([REGION]))
    inside = [int((pairwise_ioa(region, Boxes(b))[0] > 0.5).sum()) for b in boxes]
    assert min(inside) >= 10
    for thresh in (-1.0, 0.5):
        model = build(tiny_cfg(IGNORE_IOF_THRESH=thresh))
        model.roi_heads.batch_size_per_image = 512  # keep every box
        model.roi_heads.proposal_append_gt = False
        with EventStorage() as storage:
            run_heads(model, batch, proposals_of(batch, boxes), train=True)
        counts[thresh] = (
            storage.history("roi_head/num_fg_samples").latest(),
            storage.history("roi_head/num_bg_samples").latest(),
        )
    fg_all, bg_all = counts[-1.0]
    fg, bg = counts[0.5]
    assert fg_all + bg_all == len(boxes[0]) and fg + bg == len(boxes[0]) - sum(inside) / len(inside)
    assert bg < bg_all
