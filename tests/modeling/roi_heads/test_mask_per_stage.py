"""MASK_PER_STAGE: a mask head per stage, trained on its positives, averaged at test time."""

import torch

from detectron2.layers import cat
from detectron2.utils.events import EventStorage

from projects.cascade.modeling.roi_heads.mask_per_stage import MaskHeadPerStage
from tests.helpers import (
    build,
    build_like,
    record_stage_inputs,
    run_heads,
    synthetic_batch,
    tiny_cfg,
)

NUM_CLASSES = 3  # tiny_cfg's


def _mask_losses(mask_per_stage, loss_weights, reference=None):
    cfg = tiny_cfg(mask=True, MASK_PER_STAGE=mask_per_stage, STAGE_LOSS_WEIGHTS=loss_weights)
    model = build(cfg) if reference is None else build_like(reference, cfg)
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
        torch.testing.assert_close(
            weighted[f"loss_mask_stage{k}"], plain[f"loss_mask_stage{k}"] * w
        )


def test_single_mask_head_keeps_its_name_and_unscaled_loss():
    model, plain = _mask_losses(False, [1.0, 1.0, 1.0])
    assert "roi_heads.mask_head.predictor.weight" in model.state_dict()
    _, weighted = _mask_losses(False, [1.0, 0.5, 0.25], reference=model)
    assert not any(k.startswith("loss_mask_stage") for k in weighted)
    assert torch.equal(weighted["loss_mask"], plain["loss_mask"])


def test_each_mask_head_trains_on_its_stage_positives(monkeypatch):
    model = build(tiny_cfg(mask=True, MASK_PER_STAGE=True))
    seen = record_stage_inputs(monkeypatch, model.roi_heads)
    trained_on = {}
    for k, head in enumerate(model.roi_heads.mask_head):
        head.register_forward_pre_hook(
            lambda module, args, k=k: trained_on.__setitem__(k, sum(len(i) for i in args[1]))
        )
    with EventStorage():
        run_heads(model, synthetic_batch(with_masks=True), train=True)
    positives = [sum(int((p.gt_classes < NUM_CLASSES).sum()) for p in stage) for stage in seen]
    assert trained_on == dict(enumerate(positives))
    assert len(set(positives)) > 1, "the test needs stages with different positives"


def test_mask_per_stage_inference_averages_the_heads():
    model = build(tiny_cfg(mask=True, MASK_PER_STAGE=True))
    batch = synthetic_batch(with_masks=True)
    instances, features = run_heads(model, batch)
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
