"""The cascade's options: class-specific regression, TEST_SCORE, TEST_STAGE, RESAMPLE, MASK_PER_STAGE."""
import re

import pytest
import torch
import torch.nn.functional as F

from detectron2.config import get_cfg
from detectron2.layers import cat
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from projects.cascade import add_cascade_config
from projects.cascade.modeling.roi_heads.mask_per_stage import MaskHeadPerStage
from projects.cascade.modeling.roi_heads.sampling import match_at_stage_iou
from tests.common import assert_same_detections, build, synthetic_batch, tiny_cfg

KEY = "MODEL.ROI_BOX_CASCADE_HEAD"
NUM_CLASSES = 3  # tiny_cfg's


def _cfg(mask=False, stages=3, class_specific=False, **options):
    cfg = tiny_cfg(mask=mask, stages=stages)
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = not class_specific
    for key, value in options.items():
        setattr(cfg.MODEL.ROI_BOX_CASCADE_HEAD, key, value)
    return cfg


def _build_like(reference, cfg):
    """A model built from `cfg` with the weights of `reference`."""
    model = build(cfg)
    model.load_state_dict(reference.state_dict())
    return model


def _record_stage_inputs(monkeypatch, heads):
    """The proposals each stage runs on, appended as the stages run."""
    seen = []
    run_stage = heads._run_stage

    def recording(features, proposals, stage):
        seen.append(proposals)
        return run_stage(features, proposals, stage)

    monkeypatch.setattr(heads, "_run_stage", recording)
    return seen


def _run_heads(model, batch, proposals=None, train=False):
    """Run the ROI heads on `proposals` (the RPN's when None); return (output, features)."""
    model.train(train)
    images = model.preprocess_image(batch)
    with torch.set_grad_enabled(train):
        features = model.backbone(images.tensor)
        targets = [b["instances"] for b in batch] if train else None
        if proposals is None:
            proposals, _ = model.proposal_generator(images, features, targets)
        output, losses = model.roi_heads(images, features, proposals, targets)
    return (losses if train else output), features


def _proposals(batch, boxes_per_image):
    proposals = []
    for b, boxes in zip(batch, boxes_per_image):
        p = Instances((b["height"], b["width"]))
        p.proposal_boxes = Boxes(boxes)
        p.objectness_logits = torch.zeros(len(boxes))
        proposals.append(p)
    return proposals


def _random_boxes(batch, seed, count=30, min_size=8.0):
    g = torch.Generator().manual_seed(seed)
    boxes = []
    for b in batch:
        h, w = b["height"], b["width"]
        xy = torch.rand(count, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = min_size + torch.rand(count, 2, generator=g) * torch.tensor([w * 0.2, h * 0.2])
        boxes.append(torch.cat([xy, xy + wh], dim=1))
    return boxes


@torch.no_grad()
def _set_predictor(predictor, class_logits=None, deltas=None):
    """Make a stage predict the same class logits and (weighted) deltas for every box."""
    if class_logits is not None:
        predictor.cls_score.weight.zero_()
        predictor.cls_score.bias.copy_(torch.tensor(class_logits))
    if deltas is not None:
        predictor.bbox_pred.weight.zero_()
        predictor.bbox_pred.bias.copy_(torch.tensor(deltas))


def _regressed(predictor, deltas, boxes, image_size):
    """`boxes` moved by the weighted `deltas` (one row, or one per box), clipped to the image."""
    deltas = torch.as_tensor(deltas, dtype=torch.float32).expand(len(boxes), 4)
    moved = Boxes(predictor.box2box_transform.apply_deltas(deltas, boxes))
    moved.clip(image_size)
    return moved.tensor


def _rows_in(rows, table):
    """Which of `rows` appear (to float precision) in `table`."""
    if len(table) == 0:
        return torch.zeros(len(rows), dtype=torch.bool)
    return torch.cdist(rows, table, p=float("inf")).min(dim=1).values < 1e-3


# ------------------------------------------------------------------------ config


def test_option_defaults_follow_the_design():
    cfg = get_cfg()
    add_cascade_config(cfg)
    node = cfg.MODEL.ROI_BOX_CASCADE_HEAD
    assert (node.TEST_SCORE, node.TEST_STAGE, node.RESAMPLE, node.MASK_PER_STAGE) == (
        "mean", -1, False, False
    )


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("TEST_SCORE", "max", f"{KEY}.TEST_SCORE = 'max'"),
        ("TEST_STAGE", 0, f"{KEY}.TEST_STAGE = 0"),
        ("TEST_STAGE", 4, f"{KEY}.TEST_STAGE = 4"),
        ("TEST_STAGE", -2, f"{KEY}.TEST_STAGE = -2"),
        ("RESAMPLE", "yes", f"{KEY}.RESAMPLE = 'yes'"),
        ("MASK_PER_STAGE", 1, f"{KEY}.MASK_PER_STAGE = 1"),
    ],
)
def test_invalid_option_names_the_key(key, value, message):
    with pytest.raises(ValueError) as e:
        build_model(_cfg(**{key: value}))
    assert message in str(e.value)


# ------------------------------------------------------- class-specific regression


def test_class_specific_regression_trains_and_predicts():
    model = build(_cfg(class_specific=True))
    assert [p.bbox_pred.out_features for p in model.roi_heads.box_predictor] == [4 * NUM_CLASSES] * 3
    batch = synthetic_batch()
    model.train()
    with EventStorage():
        losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box_reg_stage2"] > 0
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        assert len(model(batch)[0]["instances"]) > 0


def _class_deltas():
    """Class c moves a box by (c + 1) / 10 of its width, in stage 1's weighted units."""
    return [d for c in range(NUM_CLASSES) for d in (c + 1.0, 0.0, 0.0, 0.0)]


def _logits_favoring(top_class):
    """The background scores highest, so the pick must skip it; then `top_class`."""
    logits = [0.0] * NUM_CLASSES + [5.0]
    logits[top_class] = 1.0
    return logits


@pytest.mark.parametrize("top_class", [0, 2])
def test_class_specific_test_time_refinement_uses_top_foreground_class(monkeypatch, top_class):
    model = build(_cfg(class_specific=True))
    first = model.roi_heads.box_predictor[0]
    _set_predictor(first, _logits_favoring(top_class), _class_deltas())
    seen = _record_stage_inputs(monkeypatch, model.roi_heads)
    batch = synthetic_batch()
    _run_heads(model, batch, _proposals(batch, _random_boxes(batch, seed=1)))
    delta = _class_deltas()[4 * top_class : 4 * top_class + 4]
    for before, after in zip(seen[0], seen[1]):
        expected = _regressed(first, delta, before.proposal_boxes.tensor, before.image_size)
        torch.testing.assert_close(after.proposal_boxes.tensor, expected)


def test_class_specific_training_refinement_uses_gt_class_of_positives(monkeypatch):
    model = build(_cfg(class_specific=True))
    first = model.roi_heads.box_predictor[0]
    top_class = 2
    _set_predictor(first, _logits_favoring(top_class), _class_deltas())
    seen = _record_stage_inputs(monkeypatch, model.roi_heads)
    batch = synthetic_batch()
    with EventStorage():
        _run_heads(model, batch, _proposals(batch, _random_boxes(batch, seed=1)), train=True)
    deltas = torch.tensor(_class_deltas()).view(NUM_CLASSES, 4)
    some_positive_of_another_class = False
    for before, after in zip(seen[0], seen[1]):
        is_fg = before.gt_classes < NUM_CLASSES
        classes = torch.where(is_fg, before.gt_classes, torch.tensor(top_class))
        some_positive_of_another_class |= bool((classes != top_class).any())
        expected = _regressed(first, deltas[classes], before.proposal_boxes.tensor, before.image_size)
        expected = expected[Boxes(expected).nonempty()]
        torch.testing.assert_close(after.proposal_boxes.tensor, expected)
    assert some_positive_of_another_class, "the test needs positives of other classes"


def test_class_specific_detections_take_each_class_own_box(monkeypatch):
    model = build(_cfg(class_specific=True))
    last = model.roi_heads.box_predictor[-1]
    # Equal foreground scores, so every box is detected under each class.
    _set_predictor(last, [1.0] * NUM_CLASSES + [0.0], _class_deltas())
    seen = _record_stage_inputs(monkeypatch, model.roi_heads)
    batch = synthetic_batch()
    instances, _ = _run_heads(model, batch, _proposals(batch, _random_boxes(batch, seed=1)))
    deltas = torch.tensor(_class_deltas()).view(NUM_CLASSES, 4)
    for inputs, detections in zip(seen[-1], instances):
        assert set(detections.pred_classes.tolist()) == set(range(NUM_CLASSES))
        for c in range(NUM_CLASSES):
            boxes_of_class = _regressed(last, deltas[c], inputs.proposal_boxes.tensor, inputs.image_size)
            detected = detections.pred_boxes.tensor[detections.pred_classes == c]
            assert _rows_in(detected, boxes_of_class).all(), c


# ------------------------------------------------------------ TEST_SCORE / TEST_STAGE


def _manual_cascade(heads, features, proposals):
    """Each stage's (probabilities, regressed boxes) on one image, and the final boxes' features."""
    (proposals,) = proposals
    features = [features[f] for f in heads.box_in_features]
    boxes = proposals.proposal_boxes
    stages = []
    for head, predictor in zip(heads.box_head, heads.box_predictor):
        logits, deltas = predictor(head(heads.box_pooler(features, [boxes])))
        regressed = predictor.box2box_transform.apply_deltas(deltas, boxes.tensor)
        stages.append((F.softmax(logits, dim=-1), regressed))
        boxes = Boxes(regressed.clone())
        boxes.clip(proposals.image_size)
    return stages, heads.box_pooler(features, [boxes])


def _detect(heads, boxes, scores, image_size):
    last = heads.box_predictor[-1]
    instances, _ = fast_rcnn_inference(
        [boxes], [scores], [image_size], last.test_score_thresh, last.test_nms_thresh,
        last.test_topk_per_image,
    )
    return instances[0]


def _assert_same_detections(got, expected):
    torch.testing.assert_close(got.pred_boxes.tensor, expected.pred_boxes.tensor)
    torch.testing.assert_close(got.scores, expected.scores)
    assert torch.equal(got.pred_classes, expected.pred_classes)


@pytest.fixture(scope="module")
def scoring_setup():
    """A model and one image, the RPN's proposals and the backbone features."""
    model = build(_cfg())
    batch = synthetic_batch()[:1]
    model.eval()
    images = model.preprocess_image(batch)
    with torch.no_grad():
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features)
    return model, images, features, proposals


def _detections_with(scoring_setup, test_score):
    model, images, features, proposals = scoring_setup
    model = _build_like(model, _cfg(TEST_SCORE=test_score)).eval()
    with torch.no_grad():
        instances, _ = model.roi_heads(images, features, proposals)
    return instances[0]


def test_mean_on_final_scores_the_final_boxes_with_every_stage(scoring_setup):
    model, _, features, proposals = scoring_setup
    heads = model.roi_heads
    with torch.no_grad():
        stages, final_features = _manual_cascade(heads, features, proposals)
        probs = [
            F.softmax(predictor(head(final_features))[0], dim=-1)
            for head, predictor in zip(heads.box_head, heads.box_predictor)
        ]
    expected = _detect(heads, stages[-1][1], sum(probs) * (1.0 / 3), proposals[0].image_size)
    got = _detections_with(scoring_setup, "mean_on_final")
    _assert_same_detections(got, expected)
    mean = _detections_with(scoring_setup, "mean")
    assert not torch.allclose(got.scores[:10], mean.scores[:10])


def test_last_keeps_the_last_stage_own_softmax(scoring_setup):
    model, _, features, proposals = scoring_setup
    with torch.no_grad():
        stages, _ = _manual_cascade(model.roi_heads, features, proposals)
    last_probs, last_boxes = stages[-1]
    expected = _detect(model.roi_heads, last_boxes, last_probs, proposals[0].image_size)
    _assert_same_detections(_detections_with(scoring_setup, "last"), expected)


def _stage_of(name):
    """The stage of a per-stage parameter; -1 for shared ones."""
    match = re.match(r"roi_heads\.(box_head|box_predictor|mask_head)\.(\d+)\.", name)
    return int(match.group(2)) if match else -1


@pytest.mark.parametrize(
    "test_stage, test_score, mask_per_stage",
    [(1, "last", False), (2, "last", False), (2, "mean_on_final", False), (2, "mean", True)],
)
def test_test_stage_equals_a_shorter_cascade(test_stage, test_score, mask_per_stage):
    options = {"TEST_SCORE": test_score, "MASK_PER_STAGE": mask_per_stage}
    full = build(_cfg(mask=mask_per_stage, TEST_STAGE=test_stage, **options))
    short = build(_cfg(mask=mask_per_stage, stages=test_stage, **options))
    weights = {n: v for n, v in full.state_dict().items() if _stage_of(n) < test_stage}
    short.load_state_dict(weights, strict=True)
    batch = synthetic_batch()
    with torch.no_grad():
        expected, got = short.eval()(batch), full.eval()(batch)
    assert_same_detections(expected, got, masks=mask_per_stage)


# ---------------------------------------------------------------------- RESAMPLE


def _shifted_ground_truth(batch, copies=10):
    """Copies of every gt box moved left by 0.4 of its width: IoU 0.43, background at 0.5."""
    boxes = []
    for b in batch:
        gt = b["instances"].gt_boxes.tensor
        shift = torch.stack([0.4 * (gt[:, 2] - gt[:, 0]), torch.zeros(len(gt))] * 2, dim=1)
        boxes.append((gt - shift).repeat(copies, 1))
    return boxes


def _tiny_boxes(batch):
    """2x2 boxes: background at every stage."""
    return _random_boxes(batch, seed=4, min_size=2.0)


def _logged_counts(resample, make_boxes):
    """Per-stage mean (fg, bg) when stage 1 moves every box right by 0.4 of its width."""
    cfg = _cfg(RESAMPLE=resample)
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 16
    cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION = 0.25
    model = build(cfg)
    heads = model.roi_heads
    # Stage 1 moves the shifted copies back onto their gt box, and the gt boxes off theirs;
    # later stages keep every box where it is.
    _set_predictor(heads.box_predictor[0], deltas=[4.0, 0.0, 0.0, 0.0])
    for predictor in heads.box_predictor[1:]:
        _set_predictor(predictor, deltas=[0.0] * 4)
    batch = synthetic_batch()
    torch.manual_seed(0)
    with EventStorage() as storage:
        _run_heads(model, batch, _proposals(batch, make_boxes(batch)), train=True)
    names = ["roi_head/num_{}_samples"] + [f"stage{k}/roi_head/num_{{}}_samples" for k in (1, 2)]
    return [
        (storage.history(n.format("fg")).latest(), storage.history(n.format("bg")).latest())
        for n in names
    ]


@pytest.mark.parametrize(
    "make_boxes, expected",
    [
        # Stage 1's positives are the gt boxes (4 and 1 per image), its negatives shifted
        # copies (12 of 40, and all 10). It moves the copies onto the gt, so later stages
        # have 16 and 11 positives: capped at 4 (0.25 of 16), and no negatives left.
        (_shifted_ground_truth, [(2.5, 11.0), (4.0, 0.0), (4.0, 0.0)]),
        # Only the exact gt boxes are positives at every stage; negatives fill up the 16.
        (_tiny_boxes, [(2.5, 13.5), (2.5, 13.5), (2.5, 13.5)]),
    ],
    ids=["positives", "negatives"],
)
def test_resample_samples_every_stage_at_the_positive_fraction(make_boxes, expected):
    assert _logged_counts(True, make_boxes) == expected
    # The check can fail: without re-sampling, stage 2 takes stage 1's boxes as they are.
    unsampled = _logged_counts(False, make_boxes)
    assert unsampled[0] == expected[0] and unsampled[1] != expected[1]


def test_resample_replaces_the_regressed_ground_truth(monkeypatch):
    cfg = _cfg(RESAMPLE=True)
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512  # keep every box
    model = build(cfg)
    first = model.roi_heads.box_predictor[0]
    delta = [1.0, 0.0, 0.0, 0.0]  # 0.1 of a box's width to the right
    _set_predictor(first, deltas=delta)
    seen = _record_stage_inputs(monkeypatch, model.roi_heads)
    batch = synthetic_batch()
    proposals = _proposals(batch, _random_boxes(batch, seed=1))
    with EventStorage():
        _run_heads(model, batch, proposals, train=True)
    for b, before, after in zip(batch, seen[0], seen[1]):
        gt = b["instances"].gt_boxes.tensor
        regressed_gt = _regressed(first, delta, gt, before.image_size)
        boxes = after.proposal_boxes.tensor
        assert not _rows_in(regressed_gt, boxes).any()
        exact_gt = boxes[after.is_ground_truth]
        assert len(exact_gt) == len(gt) and torch.equal(exact_gt.unique(dim=0), gt.unique(dim=0))
        # As many boxes as before: each regressed gt box dropped, each exact one appended.
        assert len(after) == len(before) == 30 + len(gt)

    # The check can fail: with detectron2's labelling the regressed gt boxes go on to stage 2.
    model.roi_heads.label_stage = match_at_stage_iou
    seen.clear()
    with EventStorage():
        _run_heads(model, batch, proposals, train=True)
    for b, before, after in zip(batch, seen[0], seen[1]):
        regressed_gt = _regressed(first, delta, b["instances"].gt_boxes.tensor, before.image_size)
        assert _rows_in(regressed_gt, after.proposal_boxes.tensor).all()


def test_resample_without_appended_ground_truth_trains():
    cfg = _cfg(RESAMPLE=True)
    cfg.MODEL.ROI_HEADS.PROPOSAL_APPEND_GT = False
    model = build(cfg)
    model.train()
    with EventStorage():
        losses = model(synthetic_batch())
    assert all(torch.isfinite(v) for v in losses.values())


# ------------------------------------------------------------------ MASK_PER_STAGE


def _mask_losses(mask_per_stage, loss_weights, reference=None):
    cfg = _cfg(mask=True, MASK_PER_STAGE=mask_per_stage, STAGE_LOSS_WEIGHTS=loss_weights)
    model = build(cfg) if reference is None else _build_like(reference, cfg)
    model.train()
    torch.manual_seed(7)
    with EventStorage():
        return model, model(synthetic_batch(with_masks=True))


def test_mask_per_stage_has_one_head_per_stage_with_weighted_losses():
    model, plain = _mask_losses(True, [1.0, 1.0, 1.0])
    heads = model.roi_heads.mask_head
    assert isinstance(heads, MaskHeadPerStage) and len(heads) == 3
    assert "roi_heads.mask_head.2.predictor.weight" in model.state_dict()
    assert "loss_mask" not in plain
    _, weighted = _mask_losses(True, [1.0, 0.5, 0.25], reference=model)
    for k, w in enumerate([1.0, 0.5, 0.25]):
        torch.testing.assert_close(weighted[f"loss_mask_stage{k}"], plain[f"loss_mask_stage{k}"] * w)


def test_single_mask_head_keeps_its_name_and_unscaled_loss():
    model, plain = _mask_losses(False, [1.0, 1.0, 1.0])
    assert "roi_heads.mask_head.predictor.weight" in model.state_dict()
    _, weighted = _mask_losses(False, [1.0, 0.5, 0.25], reference=model)
    assert not any(k.startswith("loss_mask_stage") for k in weighted)
    assert torch.equal(weighted["loss_mask"], plain["loss_mask"])


def test_each_mask_head_trains_on_its_stage_positives(monkeypatch):
    model = build(_cfg(mask=True, MASK_PER_STAGE=True))
    seen = _record_stage_inputs(monkeypatch, model.roi_heads)
    trained_on = {}
    for k, head in enumerate(model.roi_heads.mask_head):
        head.register_forward_pre_hook(
            lambda module, args, k=k: trained_on.__setitem__(k, sum(len(i) for i in args[1]))
        )
    with EventStorage():
        _run_heads(model, synthetic_batch(with_masks=True), train=True)
    positives = [sum(int((p.gt_classes < NUM_CLASSES).sum()) for p in stage) for stage in seen]
    assert trained_on == dict(enumerate(positives))
    assert len(set(positives)) > 1, "the test needs stages with different positives"


def test_mask_per_stage_inference_averages_the_heads():
    model = build(_cfg(mask=True, MASK_PER_STAGE=True))
    batch = synthetic_batch(with_masks=True)
    instances, features = _run_heads(model, batch)
    heads = model.roi_heads
    with torch.no_grad():
        x = heads.mask_pooler(
            [features[f] for f in heads.mask_in_features], [i.pred_boxes for i in instances]
        )
        classes = cat([i.pred_classes for i in instances])
        rows = torch.arange(len(classes))
        probs = [head.layers(x)[rows, classes][:, None].sigmoid() for head in heads.mask_head]
    got = cat([i.pred_masks for i in instances])
    assert len(got) > 0
    torch.testing.assert_close(got, sum(probs) / 3)
    assert not torch.allclose(got, probs[0])
