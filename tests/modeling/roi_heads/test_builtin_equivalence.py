"""With every default, CascadeRCNNROIHeads must reproduce detectron2's built-in CascadeROIHeads."""

import pytest
import torch

from detectron2.utils.events import EventStorage

from tests.helpers import assert_same_detections, build, synthetic_batch, tiny_cfg


def _pair(stages, mask):
    reference = build(tiny_cfg("CascadeROIHeads", mask=mask, stages=stages), seed=1)
    ours = build(tiny_cfg("CascadeRCNNROIHeads", mask=mask, stages=stages), seed=2)
    # strict=True: the names match one to one, nothing missing or unexpected.
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


@pytest.mark.parametrize("stages", [3, 4])
@pytest.mark.parametrize("mask", [False, True])
def test_same_detections(stages, mask):
    reference, ours = _pair(stages, mask)
    batch = synthetic_batch(with_masks=mask)
    reference.eval()
    ours.eval()
    with torch.no_grad():
        expected = reference(batch)
        got = ours(batch)
    assert_same_detections(expected, got, masks=mask)


@pytest.mark.parametrize("stages", [3, 4])
@pytest.mark.parametrize("mask", [False, True])
def test_same_losses_and_gradients(stages, mask):
    reference, ours = _pair(stages, mask)
    batch = synthetic_batch(with_masks=mask)
    results = []
    for model in (reference, ours):
        model.train()
        torch.manual_seed(123)  # the same proposal sampling in both
        with EventStorage():
            losses = model(batch)
        sum(losses.values()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((losses, grads))
    (ref_losses, ref_grads), (our_losses, our_grads) = results
    assert set(ref_losses) == set(our_losses)
    assert any(f"loss_box_reg_stage{stages - 1}" == k for k in our_losses)
    for k in ref_losses:
        assert torch.equal(ref_losses[k], our_losses[k]), k
    assert set(ref_grads) == set(our_grads)
    for n in ref_grads:
        torch.testing.assert_close(our_grads[n], ref_grads[n], rtol=0, atol=0, msg=n)


def test_mixed_precision_training_on_cpu():
    """
    detectron2's AMPTrainer needs CUDA; on the CPU, torch's bfloat16 autocast is the mixed
    precision there is. Under it our head trains as the built-in does: the same losses and
    gradients, all finite, float32 losses.
    """
    reference, ours = _pair(stages=3, mask=True)
    batch = synthetic_batch(with_masks=True)
    results = []
    for model in (reference, ours):
        model.train()
        torch.manual_seed(123)
        with EventStorage(), torch.autocast("cpu", dtype=torch.bfloat16):
            losses = model(batch)
        sum(losses.values()).backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        results.append((losses, grads))
    (ref_losses, ref_grads), (our_losses, our_grads) = results
    assert ref_losses.keys() == our_losses.keys()
    for k, loss in our_losses.items():
        assert loss.dtype == torch.float32 and torch.isfinite(loss), k
        assert torch.equal(loss, ref_losses[k]), k
    assert ref_grads.keys() == our_grads.keys()
    for n, grad in our_grads.items():
        assert torch.isfinite(grad).all(), n
        assert torch.equal(grad, ref_grads[n]), n
