"""Deploy: TorchScript and ONNX exports, their runtime, and their comparison with eager."""

from .exporter import FORMATS, ONNX_OPSET, deploy_metadata, export_model, load_images
from .runtime import ExportedModel
from .verify import Differences, compare_with_eager, format_table, pair_detections

__all__ = [
    "FORMATS",
    "ONNX_OPSET",
    "deploy_metadata",
    "export_model",
    "load_images",
    "ExportedModel",
    "Differences",
    "compare_with_eager",
    "format_table",
    "pair_detections",
]
