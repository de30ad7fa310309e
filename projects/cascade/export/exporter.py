"""
Export a detectron2 R-CNN of this project (Cascade R-CNN, with or without masks) to
TorchScript or ONNX. `runtime.py` loads the result, `verify.py` compares it with eager.

What is exported is detectron2's `GeneralizedRCNN.inference(..., do_postprocess=False)` for
one image, traced through detectron2's `TracingAdapter` (scripting the model does not work;
docs/deploy.md says why):

    input   "image"        float32 (3, H, W), 0-255, in cfg.INPUT.FORMAT channel order, already
                           resized as detectron2's DefaultPredictor does. Any H and W.
    outputs "pred_boxes"   float32 (N, 4), XYXY in the input's pixels
            "pred_classes" int64 (N,)
            "pred_masks"   float32 (N, 1, M, M), mask probabilities (Mask R-CNN only)
            "scores"       float32 (N,)
            "image_size"   int64 (2,), (H, W) of the input

The steps that need the original image size (scaling the detections back, pasting the masks)
stay outside the graph, in `tools/deploy/run_exported.py`, as they stay outside detectron2's models.
Every exported file embeds, under `METADATA_KEY`, a JSON object with the output names and
what a runner needs to prepare an image (`deploy_metadata`), so that one file is enough.
"""

import io
import json
import logging
import os
import sys
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import onnx
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.export import TracingAdapter
from detectron2.export.flatten import InstancesSchema
from detectron2.export.torchscript_patch import patch_builtin_len
from detectron2.modeling import GeneralizedRCNN

from ..modeling.roi_heads.detection_inference import SoftNMSInference

__all__ = [
    "FORMATS",
    "ONNX_OPSET",
    "METADATA_KEY",
    "deploy_metadata",
    "load_images",
    "export_model",
]

logger = logging.getLogger(__name__)

FORMATS = ("torchscript", "onnx")
FILE_NAMES = {"torchscript": "model.ts", "onnx": "model.onnx"}
# ROIAlignV2 (aligned=True, detectron2's default pooler) maps to ONNX RoiAlign with
# coordinate_transformation_mode="half_pixel", which appeared in opset 16. torchvision
# exports it at lower opsets too, but as the unaligned op (every sample point moves by half
# a feature-map pixel), with only a warning; export_model refuses those opsets instead.
ONNX_MIN_OPSET = 16
ONNX_OPSET = 17
METADATA_KEY = "detectron2_export"
INPUT_NAME = "image"


def deploy_metadata(cfg) -> Dict:
    """
    What a runner without detectron2 needs to reproduce DefaultPredictor's preparation of
    an image and detector_postprocess's output: channel order, test-time resize, the names
    of the classes and the mask threshold.
    """
    if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
        raise ValueError(
            f"INPUT.FORMAT = {cfg.INPUT.FORMAT!r}: the exported model's runner takes RGB or BGR."
        )
    class_names = None
    if cfg.DATASETS.TEST:
        class_names = MetadataCatalog.get(cfg.DATASETS.TEST[0]).get("thing_classes")
    if class_names is None:
        class_names = [str(k) for k in range(cfg.MODEL.ROI_HEADS.NUM_CLASSES)]
    return {
        "input_format": cfg.INPUT.FORMAT,
        "min_size_test": int(cfg.INPUT.MIN_SIZE_TEST),
        "max_size_test": int(cfg.INPUT.MAX_SIZE_TEST),
        "class_names": list(class_names),
        "mask_threshold": 0.5,  # detector_postprocess's default
    }


def load_images(
    cfg, image_files: Sequence[str] = (), dataset: Optional[str] = None, max_images=None
) -> List[Tuple[str, torch.Tensor]]:
    """
    Model inputs, prepared exactly as DefaultPredictor prepares them (read in INPUT.FORMAT,
    shortest edge resized to INPUT.MIN_SIZE_TEST), from image files or else from the images
    of a registered dataset. Returns (file name, float32 (3, H, W) tensor) pairs.
    """
    files = list(image_files)
    if not files:
        if dataset is None:
            raise ValueError("Give image files or the name of a registered dataset.")
        files = [record["file_name"] for record in DatasetCatalog.get(dataset)]
        if not files:
            raise ValueError(f"Dataset '{dataset}' has no images.")
    files = files[:max_images]
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    images = []
    for file_name in files:
        image = read_image(file_name, format=cfg.INPUT.FORMAT)
        image = resize.get_transform(image).apply_image(image)
        images.append((file_name, torch.as_tensor(image.astype("float32").transpose(2, 0, 1))))
    return images


def _project_modules() -> List[str]:
    """This project's imported modules, e.g. projects.cascade.modeling.roi_heads."""
    package = __name__.split(".export.")[0]  # projects.cascade
    return sorted(
        n for n, m in sys.modules.items() if m is not None and n.startswith(package + ".")
    )


def _inference(model: GeneralizedRCNN, inputs):
    """
    The function `TracingAdapter` traces. Python's `len()` returns an int, which tracing
    records as a constant: `len(proposals)` would fix the number of boxes to the traced
    image's. detectron2 patches `len` in its own heads for this; we patch it in this
    project's modules too, so the cascade's `len(...)` stays a traced size.
    """
    with patch_builtin_len(_project_modules()):
        instances = model.inference(inputs, do_postprocess=False)[0]
    return [{"instances": instances}]


def _traceable(model: GeneralizedRCNN, image: torch.Tensor) -> Tuple[TracingAdapter, List[str]]:
    """The model wrapped for tracing, and the names of its flattened outputs."""
    if not isinstance(model, GeneralizedRCNN):
        raise TypeError(f"Only GeneralizedRCNN models can be exported, not {type(model).__name__}.")
    if model.training:
        raise ValueError("Export a model in inference mode: call model.eval() first.")
    inference = getattr(model.roi_heads, "detection_inference", None)
    if isinstance(inference, SoftNMSInference):
        raise ValueError(
            f"MODEL.ROI_BOX_CASCADE_HEAD.TEST_NMS_METHOD = {inference.method!r}: soft-NMS cannot "
            "be exported by tracing, since its loop runs once per kept box and tracing would fix "
            "that count to the traced image's. Export with TEST_NMS_METHOD hard."
        )
    adapter = TracingAdapter(model, [{INPUT_NAME: image}], _inference)
    # torch.onnx.export puts the module it is given back in its own training mode, and a
    # new module is in training mode: that would switch the detector to training too.
    adapter.eval()
    outputs = adapter(image)  # also records outputs_schema, hence the output names
    if not len(adapter.outputs_schema(outputs)[0]["instances"]):
        raise ValueError(
            "The sample image gives no detections, so the ops that run on detections (e.g. "
            "the mask head) would not be traced. Export with an image the model detects on."
        )
    instances_schema = adapter.outputs_schema.schemas[0].schemas[0]
    if not isinstance(instances_schema, InstancesSchema):
        raise TypeError(f"Unexpected output schema {adapter.outputs_schema}.")
    return adapter, list(instances_schema.keys) + ["image_size"]


def export_model(
    model: GeneralizedRCNN,
    image: torch.Tensor,
    fmt: str,
    output_dir: str,
    metadata: Dict,
    opset: int = ONNX_OPSET,
) -> str:
    """
    Trace `model` on `image` (a model input, see `load_images`) and write it to
    `output_dir/model.ts` or `output_dir/model.onnx`, with `metadata` and the output names
    embedded under METADATA_KEY. The image must give detections. Returns the file's path.
    """
    if fmt not in FORMATS:
        raise ValueError(f"Unknown format {fmt!r}; expected one of {', '.join(FORMATS)}.")
    if fmt == "onnx" and opset < ONNX_MIN_OPSET:
        raise ValueError(
            f"ONNX opset {opset} has no aligned RoiAlign (coordinate_transformation_mode="
            f"'half_pixel'); the model's ROIAlignV2 needs opset >= {ONNX_MIN_OPSET}."
        )
    adapter, output_names = _traceable(model, image)
    extra = json.dumps({**metadata, "outputs": output_names})
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, FILE_NAMES[fmt])
    with warnings.catch_warnings():
        # The tracer warns at each of detectron2's Python-side checks on tensors (asserts,
        # `if tensor.numel() == 0`); whether the trace generalizes is what
        # compare_with_eager measures, on other inputs than the traced one.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        _write(adapter, image, fmt, path, output_names, extra, opset)
    logger.info(f"Exported {fmt} to {path}; outputs {output_names}.")
    return path


def _write(adapter, image, fmt, path, output_names, extra, opset):
    if fmt == "torchscript":
        # check_trace would only re-run the traced image; compare_with_eager checks others.
        traced = torch.jit.trace(adapter, (image,), check_trace=False)
        torch.jit.save(traced, path, _extra_files={METADATA_KEY: extra})
    else:
        buffer = io.BytesIO()
        # dynamo=False: the default dynamo exporter cannot export this model (docs/deploy.md).
        torch.onnx.export(
            adapter,
            (image,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=output_names,
            dynamic_axes={INPUT_NAME: {1: "height", 2: "width"}},
        )
        proto = onnx.load_model_from_string(buffer.getvalue())
        onnx.helper.set_model_props(proto, {METADATA_KEY: extra})
        onnx.checker.check_model(proto)
        onnx.save(proto, path)
