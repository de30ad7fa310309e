"""A box pooler whose RoIAlign uses every CPU thread at test time."""
import os
from concurrent.futures import ThreadPoolExecutor, as_completed
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

# Each worker's results come from its own malloc arena, where the memory freed after copying
# stays for that worker's next result: small parts keep what the arenas hold small.
_PART_BYTES = 1 << 20


class ThreadedROIPooler(ROIPooler):
    """
    `ROIPooler` that, at test time on the CPU, splits each level's boxes among
    `torch.get_num_threads()` threads. torchvision's CPU RoIAlign runs on one thread whatever
    that number, and it is most of the cascade's ROI-head time: every stage pools again.

    Each box goes through the same RoIAlign kernel as in `ROIPooler`, so the pooled features
    are bit for bit the same. Everywhere else (training, one thread, CUDA, tracing for export,
    autocast, another pooler type) this is exactly `ROIPooler`. In training, the split
    forward saved less than the noise of an iteration, and RoIAlign's backward cannot be
    split without changing how the gradients are rounded.
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
        output = x[0].new_zeros((len(rois), x[0].shape[1], *self.output_size))
        bytes_per_box = output[0].numel() * output.element_size()
        # The calling thread only waits: pooling a part itself, it would start a second
        # OpenMP thread (for the zero fill) that competes with the workers for the cores.
        workers = _worker_pool(torch.get_num_threads())
        for level, (feature, pooler) in enumerate(zip(x, self.level_poolers)):
            inds = nonzero_tuple(levels == level)[0]
            if len(inds) == 0:
                continue
            num_parts = max(torch.get_num_threads(), len(inds) * bytes_per_box // _PART_BYTES)
            level_rois = rois[inds]
            pending = {
                workers.submit(_pool_part, pooler, feature, level_rois[part]): part
                for part in _contiguous_parts(len(inds), num_parts)
            }
            for done in as_completed(pending):
                output.index_put_((inds[pending[done]],), done.result())
        return output

    def _splits(self, x: List[torch.Tensor], box_lists: List[Boxes]) -> bool:
        return (
            torch.get_num_threads() > 1
            and not (torch.is_grad_enabled() and any(f.requires_grad for f in x))
            and sum(len(b) for b in box_lists) > 1
            and all(type(p) is ROIAlign for p in self.level_poolers)
            and all(f.device.type == "cpu" and not f.is_quantized for f in x)
            # Tracing records only the calling thread's operations.
            and not (torch.jit.is_tracing() or is_fx_tracing() or torch.onnx.is_in_onnx_export())
            # Autocast is thread-local: the worker threads would not see it.
            and not torch.is_autocast_enabled("cpu")
        )


def _pool_part(pooler: ROIAlign, feature: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():  # grad mode is thread-local: a worker starts with it on
        return pooler(feature, rois)


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
        pool = ThreadPoolExecutor(num_workers, initializer=torch.set_num_threads, initargs=(1,))
        _pool = (os.getpid(), num_workers, pool)
    return pool
