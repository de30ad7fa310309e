"""
Test-time augmentation (CascadeRCNNWithTTA): with one scale and no flip it gives the model's
own detections; it works with every option of the cascade; the merge uses the model's own
final NMS (soft-NMS too); what it cannot do, it refuses with an error naming it.
"""

import pytest
import torch

from projects.cascade.errors import ConfigError
from projects.cascade.modeling.test_time_augmentation import CascadeRCNNWithTTA
from tests.helpers import build, build_like, synthetic_batch, tiny_cfg

SIZES = ((128, 160), (96, 128))


def _inputs():
    # Without "instances": the TTA mapper sees only images.
    return [{k: v for k, v in x.items() if k != "instances"} for x in synthetic_batch(sizes=SIZES)]


def _low_threshold(model):
    """Keep every detection, with scores that differ (fresh heads score every class alike)."""
    g = torch.Generator().manual_seed(0)
    for predictor in model.roi_heads.box_predictor:
        predictor.test_score_thresh = 0.0
        with torch.no_grad():
            predictor.cls_score.weight.copy_(
                torch.randn(predictor.cls_score.weight.shape, generator=g)
            )
    return model


def test_one_scale_without_flip_gives_the_models_detections():
    model = _low_threshold(build(tiny_cfg()).eval())
    inputs = _inputs()
    with torch.no_grad():
        # One image at a time (a batch pads the smaller image), each at its own shortest
        # edge: the augmentation resizes nothing.
        for x in inputs:
            expected = model([x])[0]["instances"]
            size = min(x["image"].shape[1:])
            tta = CascadeRCNNWithTTA(model, min_sizes=(size,), max_size=1000, flip=False)
            augmented = tta([x])[0]["instances"]
            assert len(expected) > 0 and len(augmented) == len(expected)
            torch.testing.assert_close(augmented.pred_boxes.tensor, expected.pred_boxes.tensor)
            torch.testing.assert_close(augmented.scores, expected.scores)
            assert torch.equal(augmented.pred_classes, expected.pred_classes)


@pytest.mark.parametrize(
    "options",
    [
        {"MASK_PER_STAGE": True},
        {"TEST_PRUNE_TOPK": 10, "TEST_PRUNE_NMS_THRESH": 0.7},
        {"TEST_SCORE": "mean_on_final", "TEST_STAGE": 2},
        {"TEST_SCORE": "mean_logits"},
        {"TEST_SCORE": "last"},
        {"TEST_NMS_METHOD": "linear"},
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_every_option_works_with_masks(options):
    model = _low_threshold(build(tiny_cfg(mask=True, **options)).eval())
    with torch.no_grad():
        outputs = CascadeRCNNWithTTA(model, min_sizes=(96, 128), max_size=200, flip=True)(_inputs())
    assert sum(len(o["instances"]) for o in outputs) > 0
    for output, (h, w) in zip(outputs, SIZES):
        instances = output["instances"]
        assert instances.image_size == (h, w)
        assert torch.isfinite(instances.pred_boxes.tensor).all()
        assert instances.pred_masks.shape[1:] == (h, w)


def test_the_merge_uses_the_models_soft_nms():
    """Flipped and resized copies give near-duplicates: hard NMS merges them, soft-NMS keeps."""
    hard = _low_threshold(build(tiny_cfg()).eval())
    soft = _low_threshold(build_like(hard, tiny_cfg(TEST_NMS_METHOD="gaussian")).eval())
    counts = {}
    with torch.no_grad():
        for name, model in (("hard", hard), ("soft", soft)):
            for predictor in model.roi_heads.box_predictor:
                predictor.test_topk_per_image = -1  # no cap on the counts compared
            tta = CascadeRCNNWithTTA(model, min_sizes=(96, 128), max_size=200, flip=True)
            assert tta.detection_inference is model.roi_heads.detection_inference
            counts[name] = sum(len(o["instances"]) for o in tta(_inputs()))
    assert counts["soft"] > counts["hard"], counts


def test_precomputed_proposals_are_refused():
    model = build(tiny_cfg()).eval()
    model.proposal_generator = None
    with pytest.raises(ConfigError, match="does not support precomputed proposals"):
        CascadeRCNNWithTTA(model, min_sizes=(128,), max_size=200, flip=False)
