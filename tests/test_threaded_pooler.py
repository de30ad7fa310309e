"""ThreadedROIPooler pools as ROIPooler does, bit for bit, and falls back to it where needed."""
import pytest
import torch

from detectron2.modeling.poolers import ROIPooler
from detectron2.structures import Boxes

from projects.cascade import threaded_pooler
from projects.cascade.threaded_pooler import ThreadedROIPooler
from tests.common import assert_same_detections, build, synthetic_batch, tiny_cfg

FPN_SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)


def _poolers(scales):
    args = dict(output_size=7, scales=scales, sampling_ratio=0, pooler_type="ROIAlignV2")
    return ROIPooler(**args), ThreadedROIPooler(**args)


def _features(scales, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(2, 8, int(160 * s), int(192 * s), generator=g).requires_grad_()
        for s in scales
    ]


def _boxes(n, seed, max_size=120.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([150.0, 120.0])
    wh = 2 + torch.rand(n, 2, generator=g) * max_size
    return Boxes(torch.cat([xy, xy + wh], dim=1))


@pytest.mark.parametrize("num_threads", [2, 3])
@pytest.mark.parametrize("scales", [FPN_SCALES, (1 / 8,)])
def test_same_features(scales, num_threads, split_calls, set_threads, monkeypatch):
    set_threads(num_threads)
    # Parts of 3 boxes: more parts than threads, as on real images.
    monkeypatch.setattr(threaded_pooler, "_PART_BYTES", 3 * 8 * 7 * 7 * 4)
    reference, threaded = _poolers(scales)
    features = [f.detach() for f in _features(scales)]
    # Boxes of at most 60 pixels never reach the coarsest FPN level: a level with no box.
    box_lists = [_boxes(41, seed=1, max_size=60.0), _boxes(1, seed=2, max_size=60.0)]
    with torch.no_grad():
        expected = reference(features, box_lists)
        got = threaded(features, box_lists)
    assert split_calls, "the boxes were not split among threads"
    assert torch.equal(expected, got)


def test_training_is_roi_pooler(split_calls, set_threads):
    """Where a gradient is needed, the pooler does not split: the same features and grads."""
    set_threads(2)
    reference, threaded = _poolers(FPN_SCALES)
    features, box_lists = _features(FPN_SCALES), [_boxes(20, 1), _boxes(5, 2)]
    expected, got = reference(features, box_lists), threaded(features, box_lists)
    assert not split_calls
    assert torch.equal(expected, got)
    upstream = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, features, upstream, allow_unused=True)
    got_grads = torch.autograd.grad(got, features, upstream, allow_unused=True)
    for e, g in zip(expected_grads, got_grads):
        assert (e is None and g is None) or torch.equal(e, g)


def test_one_thread_is_roi_pooler(split_calls, set_threads):
    set_threads(1)
    reference, threaded = _poolers(FPN_SCALES)
    features, box_lists = _features(FPN_SCALES), [_boxes(20, 1), _boxes(5, 2)]
    assert torch.equal(reference(features, box_lists), threaded(features, box_lists))
    assert not split_calls


def test_autocast_is_roi_pooler(split_calls, set_threads):
    """Autocast is thread-local, so under it the pooler must not split."""
    set_threads(2)
    reference, threaded = _poolers(FPN_SCALES)
    features = [f.detach().bfloat16() for f in _features(FPN_SCALES)]
    box_lists = [_boxes(20, 1), _boxes(5, 2)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = reference(features, box_lists)
        got = threaded(features, box_lists)
    assert not split_calls
    assert got.dtype == expected.dtype
    assert torch.equal(expected, got)


def test_traced_pooler_generalizes(split_calls, set_threads):
    """Tracing (as export does) sees only the calling thread, so it records ROIPooler's ops."""
    set_threads(2)
    reference, threaded = _poolers(FPN_SCALES)
    features = [f.detach()[:1] for f in _features(FPN_SCALES)]  # one image

    def pool(module):
        return lambda boxes, *feats: module(list(feats), [Boxes(boxes)])

    traced = torch.jit.trace(pool(threaded), (_boxes(30, 1).tensor, *features), check_trace=False)
    assert not split_calls
    other_boxes = _boxes(17, 5).tensor
    assert torch.equal(traced(other_boxes, *features), pool(reference)(other_boxes, *features))


def test_workers_run_one_openmp_thread(set_threads):
    """
    Workers with OpenMP teams of their own would leave more OpenMP threads than cores, and
    OpenMP then slows every thread of the process; the calling thread keeps its count.
    """
    set_threads(2)
    workers = threaded_pooler._worker_pool(2)
    assert {workers.submit(torch.get_num_threads).result() for _ in range(4)} == {1}
    assert torch.get_num_threads() == 2


def test_cascade_with_threaded_pooler_detects_as_the_builtin(split_calls, set_threads):
    set_threads(2)
    reference = build(tiny_cfg("CascadeROIHeads"), seed=1)
    cfg = tiny_cfg()
    cfg.MODEL.ROI_BOX_CASCADE_HEAD.TEST_THREADED_POOLER = True
    ours = build(cfg, seed=2)
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert type(ours.roi_heads.box_pooler) is ThreadedROIPooler
    assert type(build(tiny_cfg()).roi_heads.box_pooler) is ROIPooler  # the default
    batch = synthetic_batch()
    with torch.no_grad():
        assert_same_detections(reference.eval()(batch), ours.eval()(batch))
    assert split_calls
