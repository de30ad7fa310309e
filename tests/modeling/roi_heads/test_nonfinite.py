"""
Non-finite values in the stages. detectron2's end-to-end test feeds inf and NaN features
into the ROI heads and expects no detections; its built-in cascade fails it at Boxes.clip.
Ours: at test time a row that becomes non-finite at any stage gives no detection and the
other rows are computed bit for bit as before, with every option; in training the error
names the stage and the iteration.
"""

import functools

import pytest
import torch

from detectron2.utils.events import EventStorage

from projects.cascade.modeling.stage_outputs import features_and_proposals
from tests.helpers import build, synthetic_batch, tiny_cfg

OPTIONS = [
    {},
    {"class_specific": True},
    {"RESAMPLE": True},
    {"MASK_PER_STAGE": True},
    {"TEST_SCORE": "mean_logits"},
    {"TEST_SCORE": "mean_on_final"},
    {"TEST_SCORE": "last"},
    {"TEST_PRUNE_TOPK": 10},
    {"TEST_PRUNE_NMS_THRESH": 0.7, "TEST_PRUNE_TOPK": 20},
    {"TEST_STAGE": 2},
    {"TEST_NMS_METHOD": "gaussian"},
]
IDS = ["-".join(f"{k}={v}" for k, v in o.items()) or "defaults" for o in OPTIONS]


@functools.lru_cache(maxsize=None)
def _cached_model(options):
    model = build(tiny_cfg(mask=True, **dict(options))).eval()
    g = torch.Generator().manual_seed(0)
    for predictor in model.roi_heads.box_predictor:
        predictor.test_score_thresh = 0.0  # keep every detection of the fresh heads
        with torch.no_grad():  # ... with scores that differ
            predictor.cls_score.weight.copy_(
                torch.randn(predictor.cls_score.weight.shape, generator=g)
            )
    return model


def _model(**options):
    """A tiny Cascade Mask R-CNN with `options`, built once per options (no test changes it)."""
    return _cached_model(tuple(sorted(options.items())))


@pytest.mark.parametrize("value", [float("inf"), float("nan")], ids=["inf", "nan"])
@pytest.mark.parametrize("options", OPTIONS, ids=IDS)
def test_nonfinite_features_give_no_detections(options, value):
    """detectron2's test of Mask R-CNN, on the cascade with every option."""
    model = _model(**options)
    batch = synthetic_batch()
    images, features, proposals = features_and_proposals(model, batch)
    features = {k: torch.full_like(v, value) for k, v in features.items()}
    with torch.no_grad():
        detections, _ = model.roi_heads(images, features, proposals)
    assert [len(d) for d in detections] == [0, 0]


def test_the_builtin_cascade_fails_there():
    """What the test above guards against."""
    model = build(tiny_cfg(roi_heads="CascadeROIHeads")).eval()
    images, features, proposals = features_and_proposals(model, synthetic_batch())
    features = {k: torch.full_like(v, float("nan")) for k, v in features.items()}
    with pytest.raises(AssertionError, match="Box tensor contains infinite or NaN"):
        with torch.no_grad():
            model.roi_heads(images, features, proposals)


POISONED = {0: [3, 8, 11], 1: [0, 5]}  # image -> rows of the poisoned stage's input


def _poison(monkeypatch, heads, stage, value):
    """Make stage `stage` predict non-finite box deltas for the POISONED rows."""
    run_stage = heads._run_stage

    def poisoned(features, proposals, k):
        logits, deltas = run_stage(features, proposals, k)
        if k == stage:
            deltas, start = deltas.clone(), 0
            for image, p in enumerate(proposals):
                deltas[[start + r for r in POISONED.get(image, []) if r < len(p)]] = value
                start += len(p)
        return logits, deltas

    monkeypatch.setattr(heads, "_run_stage", poisoned)


# Every stage that runs at test time. Stage 1 of a pruned cascade is left to the next test:
# the rows it sends on depend on its scores, so a clean run has other rows to compare with.
POISONINGS = [
    (options, stage)
    for options in OPTIONS
    for stage in range(options.get("TEST_STAGE", 3))
    if not (options.get("TEST_PRUNE_TOPK") and stage == 0)
]


@pytest.mark.parametrize(
    "options, stage",
    POISONINGS,
    ids=[f"{IDS[OPTIONS.index(o)]}-stage{k + 1}" for o, k in POISONINGS],
)
def test_a_row_that_becomes_nonfinite_drops_out_and_the_others_are_unchanged(
    monkeypatch, options, stage
):
    model = _model(**options)
    heads = model.roi_heads
    images, features, proposals = features_and_proposals(model, synthetic_batch())
    box_features = [features[f] for f in heads.box_in_features]

    with torch.no_grad():
        # Expected: the clean stages, with the poisoned rows taken out before the final NMS.
        clean = heads.run_stages(box_features, proposals, heads.num_test_stages)
        scores = heads.score(box_features, clean, heads.scorer)
        keep = [
            torch.tensor([r not in POISONED[i] for r in range(len(s))])
            for i, s in enumerate(scores)
        ]
        last = clean[-1]._replace(
            regressed_boxes=[b[k] for b, k in zip(clean[-1].regressed_boxes, keep)]
        )
        expected, _ = heads.detect(clean[:-1] + [last], [s[k] for s, k in zip(scores, keep)])
        expected = heads.forward_with_given_boxes(features, expected)

        _poison(monkeypatch, heads, stage, float("nan"))  # inf: see the feature test above
        got, _ = heads(images, features, proposals)
    for e, g in zip(expected, got):
        assert len(g) > 0
        assert torch.equal(e.pred_boxes.tensor, g.pred_boxes.tensor)
        assert torch.equal(e.scores, g.scores)
        assert torch.equal(e.pred_classes, g.pred_classes)
        assert torch.equal(e.pred_masks, g.pred_masks)


def test_pruning_gives_a_nonfinite_row_no_place(monkeypatch):
    """Poisoned in stage 1, a row goes to the end of the top-k, after every finite row."""
    model = _model(TEST_PRUNE_TOPK=10)
    heads = model.roi_heads
    images, features, proposals = features_and_proposals(model, synthetic_batch())
    kept = []
    prune = heads.prune

    def recording(stage, predictor):
        pruned = prune(stage, predictor)
        kept.append([len(p) for p in pruned.proposals])
        return pruned

    monkeypatch.setattr(heads, "prune", recording)
    _poison(monkeypatch, heads, 0, float("nan"))
    with torch.no_grad():
        got, _ = heads(images, features, proposals)
    assert kept == [[10, 10]] and all(len(g) > 0 for g in got)
    assert all(torch.isfinite(g.pred_boxes.tensor).all() for g in got)


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_training_stops_naming_the_stage_and_iteration(monkeypatch, stage):
    model = build(tiny_cfg())
    model.train()
    _poison(monkeypatch, model.roi_heads, stage, float("nan"))
    with EventStorage(start_iter=7):
        with pytest.raises(
            FloatingPointError,
            match=(
                rf"Cascade stage {stage + 1} of 3 \(losses \*_stage{stage}\) produced non-finite "
                r"class scores, box deltas or boxes at iteration=7\. Its input features are finite"
            ),
        ):
            model(synthetic_batch())


def test_training_names_nonfinite_features():
    model = build(tiny_cfg())
    model.train()
    batch = synthetic_batch()
    images = model.preprocess_image(batch)
    targets = [b["instances"] for b in batch]
    with EventStorage(start_iter=3):
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, targets)
        features = {k: torch.full_like(v, float("inf")) for k, v in features.items()}
        with pytest.raises(
            FloatingPointError,
            match="iteration=3. The feature maps it pooled are already non-finite",
        ):
            model.roi_heads(images, features, proposals, targets)


def test_training_names_the_stage_of_a_nonfinite_loss(monkeypatch):
    model = build(tiny_cfg())
    model.train()
    predictor = model.roi_heads.box_predictor[1]
    losses = predictor.losses
    monkeypatch.setattr(
        predictor, "losses", lambda *a: {**losses(*a), "loss_cls": torch.tensor(float("inf"))}
    )
    with EventStorage(start_iter=5):
        with pytest.raises(
            FloatingPointError,
            match="Cascade stage 2's losses loss_cls are not finite at iteration=5",
        ):
            model(synthetic_batch())
