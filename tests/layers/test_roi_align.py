"""The parallel CPU RoIAlign gives torchvision's outputs and gradients bit for bit."""

import logging

import pytest
import torch
from torchvision.ops import roi_align

from detectron2.layers import ROIAlign

from projects.cascade.layers import roi_align as parallel_roi_align
from projects.cascade.layers.roi_align import ParallelROIAlign, load_extension
from tests.helpers import build, tiny_cfg


@pytest.fixture
def two_threads():
    """The kernel splits work over torch's threads; run it with more than one."""
    assert parallel_roi_align._extension_or_none() is not None, "the extension did not build"
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _boxes(num, height, width, scale, dtype, seed=0):
    """Boxes of all sizes over 2 images, some partly or wholly off the map, some degenerate."""
    g = torch.Generator().manual_seed(seed)
    span = torch.tensor([width, height, width, height], dtype=dtype) / scale
    corners = torch.rand(num, 4, generator=g, dtype=dtype) * span * 1.3 - span * 0.15
    x0y0 = torch.minimum(corners[:, :2], corners[:, 2:])
    x1y1 = torch.maximum(corners[:, :2], corners[:, 2:])
    x1y1[:10] = x0y0[:10]  # zero-size boxes
    batch = torch.randint(0, 2, (num, 1), generator=g).to(dtype)
    return torch.cat([batch, x0y0, x1y1], dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_same_bits_as_torchvision(two_threads, dtype, aligned, sampling_ratio):
    scale = 0.25
    x = torch.randn(2, 24, 30, 41, dtype=dtype, requires_grad=True)
    rois = _boxes(257, 30, 41, scale, dtype)
    expected = roi_align(x, rois, (7, 7), scale, sampling_ratio, aligned)
    got = ParallelROIAlign((7, 7), scale, sampling_ratio, aligned)(x, rois)
    assert got.dtype == dtype and torch.equal(got, expected)

    # A non-contiguous output gradient, as a transposed consumer would send.
    grad = torch.randn(257, 24, 7, 7, dtype=dtype).transpose(2, 3).contiguous().transpose(2, 3)
    assert not grad.is_contiguous()
    (expected_grad,) = torch.autograd.grad(expected, x, grad)
    (got_grad,) = torch.autograd.grad(got, x, grad)
    assert torch.equal(got_grad, expected_grad)


def test_really_runs_the_extension_and_handles_no_boxes(monkeypatch, two_threads):
    calls = []
    ext = load_extension()
    monkeypatch.setattr(
        parallel_roi_align,
        "load_extension",
        lambda: type(
            "Spy",
            (),
            {
                "forward": lambda *a: calls.append("forward") or ext.forward(*a),
                "backward": lambda *a: calls.append("backward") or ext.backward(*a),
            },
        ),
    )
    x = torch.randn(2, 8, 10, 10, requires_grad=True)
    pooler = ParallelROIAlign((5, 5), 1.0, 0, True)
    out = pooler(x, torch.zeros(0, 5))
    assert out.shape == (0, 8, 5, 5)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert calls == ["forward", "backward"]

    # Tracing (TorchScript, ONNX) records torchvision's op, which exported models run.
    calls.clear()
    boxes = _boxes(5, 10, 10, 1.0, torch.float32)
    traced = torch.jit.trace(pooler, (x.detach(), boxes), check_trace=False)  # no eager rerun
    assert calls == [] and "torchvision::roi_align" in str(traced.graph)


def test_the_cascade_pools_with_it_and_the_key_turns_it_off():
    cfg = tiny_cfg(mask=True)
    model = build(cfg)
    for pooler in (model.roi_heads.box_pooler, model.roi_heads.mask_pooler):
        assert all(type(p) is ParallelROIAlign for p in pooler.level_poolers)
    cfg.MODEL.ROI_BOX_CASCADE_HEAD.PARALLEL_CPU_ROI_ALIGN = False
    model = build(cfg)
    for pooler in (model.roi_heads.box_pooler, model.roi_heads.mask_pooler):
        assert all(type(p) is ROIAlign for p in pooler.level_poolers)


def test_a_failed_build_falls_back_to_torchvision_with_a_warning(monkeypatch, caplog):
    def no_compiler():
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(parallel_roi_align, "load_extension", no_compiler)
    parallel_roi_align._extension_or_none.cache_clear()
    try:
        x = torch.randn(2, 4, 12, 12)
        rois = _boxes(20, 12, 12, 0.5, torch.float32)
        with caplog.at_level(logging.WARNING, logger=parallel_roi_align.__name__):
            got = ParallelROIAlign((7, 7), 0.5, 0, True)(x, rois)
        assert torch.equal(got, roi_align(x, rois, (7, 7), 0.5, 0, True))
        assert "no C++ compiler" in caplog.text and "PARALLEL_CPU_ROI_ALIGN False" in caplog.text
    finally:
        parallel_roi_align._extension_or_none.cache_clear()
