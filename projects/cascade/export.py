"""
Export a detectron2 R-CNN of this project (Cascade R-CNN, with or without masks) to
TorchScript or ONNX, and measure how far the exported model is from PyTorch eager.

What is exported is detectron2's `GeneralizedRCNN.inference(..., do_postprocess=False)` for
one image, traced through detectron2's `TracingAdapter` (scripting the model does not work;
README, "Deploy", says why):

    input   "image"        float32 (3, H, W), 0-255, in cfg.INPUT.FORMAT channel order, already
                           resized as detectron2's DefaultPredictor does. Any H and W.
    outputs "pred_boxes"   float32 (N, 4), XYXY in the input's pixels
            "pred_classes" int64 (N,)
            "pred_masks"   float32 (N, 1, M, M), mask probabilities (Mask R-CNN only)
            "scores"       float32 (N,)
            "image_size"   int64 (2,), (H, W) of the input

The steps that need the original image size (scaling the detections back, pasting the masks)
stay outside the graph, in `tools/run_exported.py`, as they stay outside detectron2's models.
Every exported file embeds, under `METADATA_KEY`, a JSON object with the output names and
what a runner needs to prepare an image (`deploy_metadata`), so that one file is enough.
"""

import io
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import onnx
import onnxruntime
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.export import TracingAdapter
from detectron2.export.flatten import InstancesSchema
from detectron2.export.torchscript_patch import patch_builtin_len
from detectron2.modeling import GeneralizedRCNN
from detectron2.structures import Instances

__all__ = [
    "FORMATS",
    "ONNX_OPSET",
    "METADATA_KEY",
    "TOLERANCES",
    "deploy_metadata",
    "load_images",
    "export_model",
    "ExportedModel",
    "Differences",
    "pair_detections",
    "Comparison",
    "compare_with_eager",
    "format_table",
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
# Largest differences from eager accepted by `Differences.failures`: box corners in pixels,
# class scores, and mask probabilities.
TOLERANCES = {"box_px": 1e-3, "score": 1e-4, "mask": 1e-4}


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
    """This project's imported modules, e.g. projects.cascade.cascade_roi_heads."""
    package = __name__.rpartition(".")[0]
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
        # dynamo=False: the default dynamo exporter cannot export this model (README, "Deploy").
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


class ExportedModel:
    """
    A file written by `export_model`, loaded the way a deployment would load it:
    TorchScript with torch.jit.load, ONNX with onnxruntime. Calling it on a model input
    returns the outputs by name, as numpy arrays.
    """

    def __init__(self, path: str, num_threads: Optional[int] = None):
        """
        Args:
            num_threads: onnxruntime's intra-op threads (default: its own choice). TorchScript
                uses torch's process-wide setting, torch.set_num_threads.
        """
        self.path = path
        if path.endswith(".ts"):
            self.format = "torchscript"
            files = {METADATA_KEY: ""}
            module = torch.jit.load(path, _extra_files=files)
            self.metadata = json.loads(files[METADATA_KEY])
            self._run = lambda image: [x.numpy() for x in module(torch.as_tensor(image))]
        elif path.endswith(".onnx"):
            self.format = "onnx"
            options = onnxruntime.SessionOptions()
            if num_threads:
                options.intra_op_num_threads = num_threads
            session = onnxruntime.InferenceSession(
                path, options, providers=["CPUExecutionProvider"]
            )
            self.metadata = json.loads(session.get_modelmeta().custom_metadata_map[METADATA_KEY])
            self._run = lambda image: session.run(None, {INPUT_NAME: np.asarray(image)})
        else:
            raise ValueError(f"{path}: expected a .ts (TorchScript) or .onnx file.")

    def __call__(self, image) -> Dict[str, np.ndarray]:
        with torch.no_grad():
            return dict(zip(self.metadata["outputs"], self._run(image)))


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def pair_detections(boxes_a, classes_a, boxes_b, classes_b) -> Tuple[np.ndarray, np.ndarray]:
    """
    Pair each detection of a with the detection of b of the same class whose box is nearest
    (largest coordinate difference). Detections are matched as sets, not by rank: two
    scores that differ in the last float32 digits can come out in either order from two
    runtimes. Returns (indices into b, paired): `paired` is False where a detection has no
    partner of its class, or shares its nearest partner with another.
    """
    if not len(boxes_a) or not len(boxes_b):
        return np.zeros(len(boxes_a), dtype=np.int64), np.zeros(len(boxes_a), dtype=bool)
    distance = np.abs(boxes_a[:, None, :] - boxes_b[None, :, :]).max(axis=2)
    distance[classes_a[:, None] != classes_b[None, :]] = np.inf
    partner = distance.argmin(axis=1)
    paired = np.isfinite(distance.min(axis=1)) & (
        np.bincount(partner, minlength=len(boxes_b))[partner] == 1
    )
    return partner, paired


@dataclass
class Differences:
    """The largest disagreements between eager and exported detections, over several images."""

    images: int = 0
    detections: int = 0  # eager's, over all images
    count_mismatches: List[str] = field(default_factory=list)  # images whose counts differ
    unpaired: int = 0  # eager detections without an exported one of their class (pair_detections)
    box_px: float = 0.0  # largest |difference| of a box coordinate, in pixels
    box_rel: float = 0.0  # the same, relative to the coordinate (at least 1 px)
    score: float = 0.0
    mask: Optional[float] = None  # mask probabilities; None without masks

    def add(self, name: str, eager: Instances, exported: Dict[str, np.ndarray]) -> None:
        """Compare one image's eager `Instances` with the exported model's outputs."""
        self.images += 1
        self.detections += len(eager)
        if len(eager) != len(exported["scores"]):
            self.count_mismatches.append(f"{name}: {len(eager)} vs {len(exported['scores'])}")
            return
        if not len(eager):
            return
        boxes = _numpy(eager.pred_boxes.tensor)
        partner, paired = pair_detections(
            boxes, _numpy(eager.pred_classes), exported["pred_boxes"], exported["pred_classes"]
        )
        self.unpaired += int((~paired).sum())
        partner, boxes = partner[paired], boxes[paired]
        if not len(partner):
            return
        box_diff = np.abs(boxes - exported["pred_boxes"][partner])
        self.box_px = max(self.box_px, float(box_diff.max()))
        self.box_rel = max(self.box_rel, float((box_diff / np.maximum(np.abs(boxes), 1.0)).max()))
        score_diff = np.abs(_numpy(eager.scores)[paired] - exported["scores"][partner])
        self.score = max(self.score, float(score_diff.max()))
        if eager.has("pred_masks"):
            mask_diff = np.abs(_numpy(eager.pred_masks)[paired] - exported["pred_masks"][partner])
            self.mask = max(self.mask or 0.0, float(mask_diff.max()))

    def failures(self) -> List[str]:
        """What is outside TOLERANCES, in words; empty when everything is within."""
        failures = [f"different numbers of detections on {m}" for m in self.count_mismatches]
        if self.unpaired:
            failures.append(f"{self.unpaired} detections without an exported one of their class")
        for key, value in (("box_px", self.box_px), ("score", self.score), ("mask", self.mask)):
            if value is not None and not value <= TOLERANCES[key]:  # NaN fails too
                failures.append(f"{key} difference {value:.3g} > {TOLERANCES[key]:g}")
        return failures


@dataclass
class Comparison:
    """What `compare_with_eager` measured."""

    differences: Differences
    eager_ms: float  # median time of one image
    exported_ms: float


def _timed(fn: Callable, *args) -> Tuple[object, float]:
    start = time.perf_counter()
    result = fn(*args)
    return result, (time.perf_counter() - start) * 1000.0


def compare_with_eager(
    model: GeneralizedRCNN,
    exported: ExportedModel,
    images: Iterable[Tuple[str, torch.Tensor]],
    repeats: int = 1,
) -> Comparison:
    """
    Run eager and exported on the same inputs, compare their detections and time them:
    each image runs `repeats` times in eager, then `repeats` times exported, and the median
    time is kept (onnxruntime's threads spin for a while after a run, and would slow an
    eager run right after it). Two untimed runs of each on the first image come first:
    TorchScript's profiling executor optimizes the graph on its second call, and
    onnxruntime allocates its buffers on its first.
    """
    images = list(images)
    differences = Differences()
    eager_times, exported_times = [], []

    def eager(image):
        with torch.no_grad():
            return model.inference([{INPUT_NAME: image}], do_postprocess=False)[0]

    for _ in range(2):
        eager(images[0][1])
        exported(images[0][1])
    for name, image in images:
        for _ in range(repeats):
            eager_out, ms = _timed(eager, image)
            eager_times.append(ms)
        for _ in range(repeats):
            exported_out, ms = _timed(exported, image)
            exported_times.append(ms)
        differences.add(os.path.basename(name), eager_out, exported_out)
    return Comparison(differences, float(np.median(eager_times)), float(np.median(exported_times)))


def format_table(rows: Sequence[Tuple[str, Comparison]]) -> str:
    """A markdown table of `compare_with_eager` results, one row per exported format."""
    lines = [
        "| format | images | detections | max box diff (px) | max box diff (rel.) | "
        "max score diff | max mask diff | unpaired | eager ms/img | exported ms/img |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for fmt, c in rows:
        d = c.differences
        mask = "-" if d.mask is None else f"{d.mask:.1e}"
        counts = f"{d.detections}" + (
            f" ({len(d.count_mismatches)} images differ)" if d.count_mismatches else ""
        )
        lines.append(
            f"| {fmt} | {d.images} | {counts} | {d.box_px:.1e} | {d.box_rel:.1e} | {d.score:.1e} | "
            f"{mask} | {d.unpaired} | {c.eager_ms:.0f} | {c.exported_ms:.0f} |"
        )
    return "\n".join(lines)
