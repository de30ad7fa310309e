"""
RoIAlign on the CPU over all of torch's threads, with torchvision's results bit for bit.

torchvision's CPU RoIAlign runs on one thread, and RoIAlign is most of a cascade's ROI-head
time on a CPU: each stage pools its own boxes. `csrc/roi_align_cpu.cpp` does the same float
operations in the same order, split over boxes (forward) and channels (backward), so the
outputs and gradients are those of `detectron2.layers.ROIAlign`, and the defaults keep
giving the built-in cascade's outputs and losses. torch builds the extension on first use
(about a minute, once; cached under ~/.cache/torch_extensions, or TORCH_EXTENSIONS_DIR).
"""

import hashlib
import logging
import os
import shutil
import sys
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.utils import _pair

from detectron2.layers import ROIAlign
from detectron2.modeling.poolers import ROIPooler

__all__ = ["ParallelROIAlign", "parallelize_pooler", "load_extension"]

logger = logging.getLogger(__name__)

_SOURCE = Path(__file__).resolve().parent / "csrc" / "roi_align_cpu.cpp"


@lru_cache(maxsize=None)
def load_extension():
    """The compiled kernel; raises if it cannot be built (no C++ compiler, say)."""
    from torch.utils.cpp_extension import load

    if shutil.which("ninja") is None:
        # torch builds with ninja; pip installs it (requirements.txt) beside the venv's
        # python, which is not on PATH when the venv is used without activating it.
        venv_bin = os.path.dirname(sys.executable)
        os.environ["PATH"] = os.pathsep.join([venv_bin, os.environ.get("PATH", "")])
    logger.info(f"Loading the parallel CPU RoIAlign ({_SOURCE.name}); the first time builds it.")
    # at::parallel_for is inlined OpenMP: without -fopenmp it would run on one thread. The
    # libgomp it links is the one torch has already loaded (same soname). The name carries
    # the source's folder: ninja recompiles whenever the source path in its build file
    # changes, so two checkouts sharing torch's extension cache would rebuild each other's.
    checkout = hashlib.sha1(str(_SOURCE).encode()).hexdigest()[:8]
    return load(
        name=f"cascade_roi_align_cpu_{checkout}",
        sources=[str(_SOURCE)],
        extra_cflags=["-O3", "-fopenmp"],
        extra_ldflags=["-fopenmp"],
    )


@lru_cache(maxsize=None)
def _extension_or_none():
    try:
        return load_extension()
    except Exception as e:  # a missing compiler or header must not stop a run on the CPU
        logger.warning(
            f"The parallel CPU RoIAlign could not be built, so RoIAlign runs on torchvision's "
            f"single-threaded kernel (same results, slower). Set "
            f"MODEL.ROI_BOX_CASCADE_HEAD.PARALLEL_CPU_ROI_ALIGN False to skip the build. "
            f"Cause: {e}"
        )
        return None


class _RoIAlignCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, rois, output_size, spatial_scale, sampling_ratio, aligned):
        ctx.save_for_backward(rois)
        ctx.settings = (output_size, spatial_scale, sampling_ratio, aligned)
        ctx.input_shape = input.shape
        height, width = output_size
        return load_extension().forward(
            input, rois, spatial_scale, height, width, sampling_ratio, aligned
        )

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (rois,) = ctx.saved_tensors
        (height, width), spatial_scale, sampling_ratio, aligned = ctx.settings
        grad_input = load_extension().backward(
            grad_output,
            rois,
            spatial_scale,
            height,
            width,
            *ctx.input_shape,
            sampling_ratio,
            aligned,
        )
        return grad_input, None, None, None, None, None


class ParallelROIAlign(ROIAlign):
    """
    detectron2's `ROIAlign`, with the parallel kernel for float32/float64 CPU tensors.
    Tracing and ONNX export keep torchvision's op, which exported models can run.
    """

    def forward(self, input, rois):
        if not self._parallel_applies(input) or _extension_or_none() is None:
            return super().forward(input, rois)
        return _RoIAlignCPU.apply(
            input,
            rois.to(dtype=input.dtype),
            _pair(self.output_size),
            float(self.spatial_scale),
            int(self.sampling_ratio),
            bool(self.aligned),
        )

    @staticmethod
    def _parallel_applies(input) -> bool:
        return (
            input.device.type == "cpu"
            and input.dtype in (torch.float32, torch.float64)
            and not torch.jit.is_tracing()
            and not torch.jit.is_scripting()
            and not torch.onnx.is_in_onnx_export()
        )


def parallelize_pooler(pooler: ROIPooler) -> ROIPooler:
    """Switch `pooler`'s RoIAlign levels (ROIAlign, ROIAlignV2) to `ParallelROIAlign`."""
    pooler.level_poolers = nn.ModuleList(
        ParallelROIAlign(p.output_size, p.spatial_scale, p.sampling_ratio, p.aligned)
        if type(p) is ROIAlign
        else p
        for p in pooler.level_poolers
    )
    return pooler
