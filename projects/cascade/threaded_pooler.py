"""A box pooler whose RoIAlign uses every CPU thread."""
import os
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Tuple

import torch

from detectron2.layers import ROIAlign, nonzero_tuple
from detectron2.modeling.poolers import (
    ROIPooler,
    assign_boxes_to_levels,
    convert_boxes_to_pooler_format,
)
from detectron2.structures import Boxes
from detectron2.utils.tracing import is_fx_tracing


class ThreadedROIPooler(ROIPooler):
    """
    `ROIPooler` that splits each level's boxes among `torch.get_num_threads()` threads on
    the CPU. torchvision's CPU RoIAlign runs on one thread whatever that number, and RoIAlign
    is about three quarters of the cascade's ROI-head time on a CPU; every stage pools again.

    Each box is pooled by the same kernel call as in `ROIPooler`, and the backward pass is
    torchvision's own, called once per level with all of that level's boxes, so the pooled
    features and the gradients are bit for bit those of `ROIPooler`. Anywhere the split
    does not apply (one thread, CUDA, tracing for export, autocast, another pooler type)
    this is exactly `ROIPooler`.
    """

    def forward(self, x: List[torch.Tensor], box_lists: List[Boxes]):
        if not self._splits(x, box_lists):
            return super().forward(x, box_lists)
        rois = convert_boxes_to_pooler_format(box_lists)
        if len(self.level_poolers) == 1:
            levels = torch.zeros(len(rois), dtype=torch.int64)
        else:
            levels = assign_boxes_to_levels(
                box_lists,
                self.min_level,
                self.max_level,
                self.canonical_box_size,
                self.canonical_level,
            )
        settings = [(p.spatial_scale, p.sampling_ratio, p.aligned) for p in self.level_poolers]
        return _ThreadedRoIAlign.apply(rois, levels, self.output_size, settings, *x)

    def _splits(self, x: List[torch.Tensor], box_lists: List[Boxes]) -> bool:
        return (
            torch.get_num_threads() > 1
            and sum(len(b) for b in box_lists) > 1
            and all(type(p) is ROIAlign for p in self.level_poolers)
            and all(f.device.type == "cpu" and not f.is_quantized for f in x)
            # Tracing records only the calling thread's operations.
            and not (torch.jit.is_tracing() or is_fx_tracing() or torch.onnx.is_in_onnx_export())
            # Autocast is thread-local: the worker threads would not see it.
            and not torch.is_autocast_enabled("cpu")
        )


class _ThreadedRoIAlign(torch.autograd.Function):
    """RoIAlign of each box on the level `levels` assigns it to, boxes split among threads."""

    @staticmethod
    def forward(ctx, rois, levels, output_size, settings, *features):
        ctx.output_size, ctx.settings = output_size, settings
        ctx.feature_shapes = [f.shape for f in features]
        ctx.save_for_backward(rois, levels)
        height, width = output_size
        output = features[0].new_zeros((len(rois), features[0].shape[1], height, width))
        for level, (feature, (scale, sampling_ratio, aligned)) in enumerate(
            zip(features, settings)
        ):
            inds = nonzero_tuple(levels == level)[0]
            if len(inds) == 0:
                continue
            level_rois = rois[inds].to(feature.dtype)

            def pool(part: slice) -> torch.Tensor:
                with torch.no_grad():  # grad mode is thread-local too
                    return torch.ops.torchvision.roi_align(
                        feature, level_rois[part], scale, height, width, sampling_ratio, aligned
                    )

            parts = _contiguous_parts(len(inds), torch.get_num_threads())
            # The calling thread only waits: pooling a part itself, it would start a second
            # OpenMP thread (for the zero fill) that competes with the workers for the cores.
            workers = _worker_pool(torch.get_num_threads())
            pending = [workers.submit(pool, p) for p in parts]
            pooled = [p.result() for p in pending]
            for part, values in zip(parts, pooled):
                output.index_put_((inds[part],), values)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        rois, levels = ctx.saved_tensors
        height, width = ctx.output_size
        grads: List[Optional[torch.Tensor]] = []
        for level, (shape, (scale, sampling_ratio, aligned)) in enumerate(
            zip(ctx.feature_shapes, ctx.settings)
        ):
            inds = nonzero_tuple(levels == level)[0]
            if len(inds) == 0 or not ctx.needs_input_grad[4 + level]:
                grads.append(None)
                continue
            grads.append(
                torch.ops.torchvision._roi_align_backward(
                    grad_output[inds],
                    rois[inds].to(grad_output.dtype),
                    scale,
                    height,
                    width,
                    *shape,
                    sampling_ratio,
                    aligned,
                )
            )
        return (None, None, None, None, *grads)


def _contiguous_parts(n: int, num_parts: int) -> List[slice]:
    """`n` rows cut into at most `num_parts` contiguous slices of nearly equal length."""
    num_parts = max(1, min(num_parts, n))
    bounds = [n * i // num_parts for i in range(num_parts + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


_pool: Tuple[int, int, Optional[ThreadPoolExecutor]] = (0, 0, None)


def _worker_pool(num_workers: int) -> ThreadPoolExecutor:
    """
    One pool per process and thread count. A forked child (a data-loader worker) inherits
    the parent's pool object but not its threads, so the pool is keyed by process id too.
    """
    global _pool
    pid, workers, pool = _pool
    if pool is None or pid != os.getpid() or workers != num_workers:
        if pool is not None and pid == os.getpid():
            pool.shutdown(wait=False)
        # One OpenMP thread each: a worker that starts OpenMP teams of its own (RoIAlign's
        # zero fill is parallel) puts more threads under OpenMP than there are cores, and
        # OpenMP then stops spin-waiting at barriers in every thread: the whole process, the
        # backbone included, ran about 1.5x slower afterwards.
        pool = ThreadPoolExecutor(
            num_workers, initializer=torch.set_num_threads, initargs=(1,)
        )
        _pool = (os.getpid(), num_workers, pool)
    return pool
