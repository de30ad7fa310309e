"""
The CUDA paths, on a machine with a GPU (CI has none: there these tests are skipped, and
they say so). Run them with `pytest tests/cuda` where torch sees a GPU; docs/testing.md
gives the last run.
"""

import math

import pytest
import torch

from detectron2.utils.events import EventStorage

from projects.cascade.layers.soft_nms import soft_nms
from projects.cascade.modeling.test_time_augmentation import CascadeRCNNWithTTA
from tests.helpers import assert_same_detections, build, metrics, run, synthetic_batch, tiny_cfg

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _on_cuda(batch):
    return [
        {**b, "image": b["image"].cuda(), "instances": b["instances"].to("cuda")} for b in batch
    ]


def _pair(mask=False, **options):
    cfg = tiny_cfg(mask=mask)
    cfg.MODEL.DEVICE = "cuda"
    for key, value in options.items():
        cfg.MODEL.ROI_BOX_CASCADE_HEAD[key] = value
    ours = build(cfg)
    builtin_cfg = cfg.clone()
    builtin_cfg.MODEL.ROI_HEADS.NAME = "CascadeROIHeads"
    builtin = build(builtin_cfg)
    ours.load_state_dict(builtin.state_dict(), strict=True)
    return ours, builtin


@pytest.mark.parametrize("mask", [False, True])
def test_equivalence_with_the_builtin_on_cuda(mask):
    ours, builtin = _pair(mask=mask)
    batch = _on_cuda(synthetic_batch(with_masks=mask))
    losses = []
    for model in (ours, builtin):
        model.train()
        torch.manual_seed(0)
        with EventStorage():
            loss = model(batch)
        sum(loss.values()).backward()
        losses.append(loss)
    assert losses[0].keys() == losses[1].keys()
    for name in losses[0]:
        assert torch.equal(losses[0][name], losses[1][name]), name
    for (name, p), (_, q) in zip(ours.named_parameters(), builtin.named_parameters()):
        if p.grad is not None:
            # RoIAlign's CUDA backward adds with atomics, in no fixed order.
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    with torch.no_grad():
        expected = builtin.eval()(batch)
        got = ours.eval()(batch)
    assert_same_detections(expected, got, masks=mask)


def test_parallel_cpu_roi_align_has_no_effect_on_cuda():
    on, _ = _pair(PARALLEL_CPU_ROI_ALIGN=True)
    off, _ = _pair(PARALLEL_CPU_ROI_ALIGN=False)
    off.load_state_dict(on.state_dict())
    batch = _on_cuda(synthetic_batch())
    with torch.no_grad():
        assert_same_detections(off.eval()(batch), on.eval()(batch))


@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_soft_nms_on_cuda_equals_the_cpu(method):
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 10 + torch.rand(200, 2, generator=g) * 40], dim=1)
    scores = torch.rand(200, generator=g)
    keep_cpu, scores_cpu = soft_nms(boxes, scores, method, 0.3, 0.5, 0.001)
    keep_gpu, scores_gpu = soft_nms(boxes.cuda(), scores.cuda(), method, 0.3, 0.5, 0.001)
    assert keep_gpu.cpu().tolist() == keep_cpu.tolist()
    torch.testing.assert_close(scores_gpu.cpu(), scores_cpu)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"TEST_NMS_METHOD": "gaussian"},
        {"TEST_PRUNE_TOPK": 20, "TEST_PRUNE_NMS_THRESH": 0.7, "TEST_SCORE": "mean_logits"},
        {"MASK_PER_STAGE": True, "TEST_STAGE": 2, "TEST_SCORE": "mean_on_final"},
    ],
)
def test_options_and_test_time_augmentation_on_cuda(options):
    model, _ = _pair(mask=True, **options)
    batch = _on_cuda(synthetic_batch(with_masks=True))
    with torch.no_grad():
        plain = model.eval()(batch)
        augmented = CascadeRCNNWithTTA(model, min_sizes=(96, 128), max_size=200, flip=True)(batch)
    for out in plain + augmented:
        instances = out["instances"]
        assert instances.pred_boxes.tensor.is_cuda
        assert (
            torch.isfinite(instances.pred_boxes.tensor).all()
            and torch.isfinite(instances.scores).all()
        )
        assert len(instances.pred_masks) == len(instances)


def test_nonfinite_features_give_no_detections_on_cuda():
    model, _ = _pair(mask=True)
    batch = _on_cuda(synthetic_batch())
    model.eval()
    with torch.no_grad():
        images = model.preprocess_image(batch)
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features, None)
        features = {k: torch.full_like(v, float("nan")) for k, v in features.items()}
        detections, _ = model.roi_heads(images, features, proposals)
    assert sum(len(d) for d in detections) == 0


@pytest.mark.e2e
def test_amp_training_and_evaluation_on_cuda(tmp_path, trees_prepared):
    """detectron2's AMPTrainer (SOLVER.AMP.ENABLED) trains the cascade through train_net.py."""
    log = run(
        "MODEL.DEVICE",
        "cuda",
        "SOLVER.AMP.ENABLED",
        "True",
        "SOLVER.MAX_ITER",
        "6",
        "DATASETS.TEST",
        "('trees_val',)",
        "OUTPUT_DIR",
        tmp_path,
    )
    rows = metrics(tmp_path)
    training = [r for r in rows if "total_loss" in r]
    assert training and all(math.isfinite(r["total_loss"]) for r in training)
    assert "bbox/AP" in rows[-1] and "copypaste: AP,AP50" in log
