"""
Export to TorchScript and ONNX (projects/cascade/export/) against PyTorch eager, and the
standalone runner (tools/deploy/run_exported.py) against detectron2's DefaultPredictor.
"""

import copy
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.layers import paste_masks_in_image
from detectron2.modeling import build_model
from detectron2.modeling.postprocessing import detector_postprocess

from projects.cascade import add_cascade_config
from projects.cascade.export import (
    FORMATS,
    Differences,
    ExportedModel,
    deploy_metadata,
    export_model,
    load_images,
    pair_detections,
)
from tests.common import build, tiny_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(REPO, "tools", "deploy", "run_exported.py")

# On a featureless image (the pixel mean everywhere) the random heads, whose biases start at
# zero, give every class exactly 1/(K+1) = 0.25; on noise the best scores reach about 0.3.
# Between the two, the featureless image has no detection and the others have some.
SCORE_THRESH = 0.26

MODELS = {
    # RGB input, so that the runner's RGB path is tested too (the graph is the same).
    "cascade": {"input_format": "RGB"},
    "cascade_mask": {"mask": True},
    # Class-specific regression, one mask head per stage and pruning before stage 2: the
    # cascade's code that picks one box per row, averages the mask heads and keeps the
    # top-k rows is traced too.
    "cascade_mask_options": {"mask": True, "options": True},
    # Pruning by NMS among stage 1's refined boxes, then top-k of the survivors.
    "cascade_nms_prune": {"nms_prune": True},
}


def _tiny_export_cfg(mask=False, options=False, input_format="BGR", nms_prune=False):
    cfg = tiny_cfg(mask=mask)
    cfg.INPUT.FORMAT = input_format
    # A test-time resize (128x160 -> 100x125) that the runner must undo. Tests that give
    # the model tensors directly bypass it.
    cfg.INPUT.MIN_SIZE_TEST = 100
    cfg.INPUT.MAX_SIZE_TEST = 1000
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = SCORE_THRESH
    # detectron2's default: the number of proposals then depends on the image.
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 1000
    if options:
        cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = False
        cfg.MODEL.ROI_BOX_CASCADE_HEAD.MASK_PER_STAGE = True
        # Fewer than the traced image's proposals, more than the tiny image's.
        cfg.MODEL.ROI_BOX_CASCADE_HEAD.TEST_PRUNE_TOPK = 50
    if nms_prune:
        cfg.MODEL.ROI_BOX_CASCADE_HEAD.TEST_PRUNE_NMS_THRESH = 0.7
        cfg.MODEL.ROI_BOX_CASCADE_HEAD.TEST_PRUNE_TOPK = 50
    return cfg


def _noise(h, w, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8).float()


def _featureless(model, h, w):
    return model.pixel_mean.expand(3, h, w).clone()


def _eager(model, image):
    with torch.no_grad():
        return model.inference([{"image": image}], do_postprocess=False)[0]


def _test_images(model):
    """The traced image, images of other sizes, and one on which the model detects nothing."""
    return {
        "traced image": _noise(128, 160, 0),
        "smaller": _noise(96, 128, 1),
        "odd size, portrait": _noise(200, 90, 2),
        "larger": _noise(256, 320, 3),
        "tiny, few proposals": _noise(24, 24, 4),
        "featureless": _featureless(model, 64, 96),
    }


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """
    name -> (cfg, model, {format: exported file}, {image name: (image, eager Instances)})
    for the tiny MODELS, made once, on first use.
    """
    cache = {}

    def get(name):
        if name not in cache:
            cfg = _tiny_export_cfg(**MODELS[name])
            model = build(cfg, seed=0).eval()
            out = str(tmp_path_factory.mktemp(name))
            image = _noise(128, 160, 0)
            files = {f: export_model(model, image, f, out, deploy_metadata(cfg)) for f in FORMATS}
            eager = {k: (v, _eager(model, v)) for k, v in _test_images(model).items()}
            cache[name] = cfg, model, files, eager
        return cache[name]

    return get


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", MODELS)
def test_matches_eager_on_other_sizes_and_without_detections(exports, name, fmt):
    _, model, files, eager_outputs = exports(name)
    exported = ExportedModel(files[fmt])
    differences = Differences()
    for image_name, (image, eager) in eager_outputs.items():
        # The test's premise: detections on noise, none on the featureless image.
        assert (len(eager) == 0) == (image_name == "featureless"), (image_name, len(eager))
        differences.add(image_name, eager, exported(image.numpy()))
    assert differences.failures() == [], differences
    assert differences.images == len(eager_outputs) and differences.detections > 0
    assert (differences.mask is not None) == model.roi_heads.mask_on


def test_differences_flags_each_kind_of_mismatch():
    """The comparison the other tests rely on must flag what is out of tolerance."""
    model = build(_tiny_export_cfg(mask=True), seed=0).eval()
    eager = _eager(model, _noise(128, 160, 0))
    outputs = {
        "pred_boxes": eager.pred_boxes.tensor.numpy(),
        "pred_classes": eager.pred_classes.numpy(),
        "pred_masks": eager.pred_masks.numpy(),
        "scores": eager.scores.numpy(),
    }

    def compare(changed_outputs):
        differences = Differences()
        differences.add("image", eager, changed_outputs)
        return differences

    # The same detections in another order (as near-equal scores may come out) are equal.
    order = [1, 0] + list(range(2, len(eager)))
    assert compare({k: v[order] for k, v in outputs.items()}).failures() == []

    for key, index, change, failure in [
        ("pred_boxes", (3, 1), 2e-3, "box_px difference 0.002 > 0.001"),
        ("scores", (0,), 2e-4, "score difference 0.0002 > 0.0001"),
        ("pred_masks", (2, 0, 5, 5), 2e-4, "mask difference 0.0002 > 0.0001"),
        ("pred_classes", (1,), 1, "detections without an exported one of their class"),
    ]:
        changed = {k: v.copy() for k, v in outputs.items()}
        changed[key][index] += change
        assert any(failure in f for f in compare(changed).failures()), (key, compare(changed))

    fewer = compare({k: v[1:] for k, v in outputs.items()})
    assert fewer.failures() == [
        f"different numbers of detections on image: {len(eager)} vs {len(eager) - 1}"
    ]


def test_export_errors(tmp_path):
    cfg = _tiny_export_cfg()
    model = build(cfg, seed=0)
    image = _noise(128, 160, 0)
    with pytest.raises(ValueError, match="model.eval"):
        export_model(model, image, "onnx", str(tmp_path), deploy_metadata(cfg))
    model.eval()
    with pytest.raises(ValueError, match="opset >= 16"):
        export_model(model, image, "onnx", str(tmp_path), deploy_metadata(cfg), opset=11)
    with pytest.raises(ValueError, match="no detections"):
        export_model(
            model, _featureless(model, 64, 96), "torchscript", str(tmp_path), deploy_metadata(cfg)
        )
    with pytest.raises(ValueError, match="Unknown format"):
        export_model(model, image, "caffe2", str(tmp_path), deploy_metadata(cfg))
    assert os.listdir(tmp_path) == []
    cfg.INPUT.FORMAT = "YUV-BT.601"
    with pytest.raises(ValueError, match="INPUT.FORMAT"):
        deploy_metadata(cfg)


@pytest.fixture(scope="module")
def noise_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "noise.png"
    Image.fromarray(_noise(128, 160, 5).byte().permute(1, 2, 0).numpy()).save(path)
    return str(path)


def _load_runner():
    spec = importlib.util.spec_from_file_location("run_exported", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _default_predictor(cfg, model, image_file):
    predictor = DefaultPredictor(cfg)
    predictor.model = model
    return predictor(read_image(image_file, format="BGR"))["instances"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ["cascade", "cascade_mask"])
def test_runner_matches_default_predictor(exports, noise_png, name, fmt):
    cfg, model, files, _ = exports(name)
    runner = _load_runner()
    got = runner.ExportedDetector(files[fmt])(runner.read_rgb(noise_png))
    expected = _default_predictor(cfg, model, noise_png)

    partner, paired = pair_detections(
        expected.pred_boxes.tensor.numpy(),
        expected.pred_classes.numpy(),
        got["boxes"],
        got["classes"],
    )
    assert len(expected) == len(got["scores"]) > 0 and paired.all()
    np.testing.assert_allclose(
        got["boxes"][partner], expected.pred_boxes.tensor.numpy(), rtol=0, atol=1e-3
    )
    np.testing.assert_allclose(got["scores"][partner], expected.scores.numpy(), rtol=0, atol=1e-4)
    if not model.roi_heads.mask_on:
        assert "masks" not in got
        return
    assert got["masks"].shape[1:] == (128, 160)
    # Pixels may differ only where the mask probability is 0.5 to within rounding: the
    # runner resamples in numpy, and onnxruntime's probabilities differ in the last digits.
    raw = _eager(model, load_images(cfg, [noise_png])[0][1])
    probs = raw.pred_masks[:, 0].clone()
    boxes = detector_postprocess(raw, 128, 160).pred_boxes.tensor
    assert len(boxes) == len(expected)  # the same rows as DefaultPredictor's
    probs = paste_masks_in_image(probs, boxes, (128, 160), threshold=-1)  # probability * 255
    differ = got["masks"][partner] != expected.pred_masks.numpy()
    assert differ.sum() < 1e-4 * differ.size
    assert set(probs.numpy()[differ].tolist()) <= {127, 128}


@pytest.mark.parametrize("fmt", FORMATS)
def test_runner_command_without_detectron2(exports, noise_png, tmp_path, fmt):
    cfg, model, files, _ = exports("cascade_mask")
    expected = _default_predictor(cfg, model, noise_png)
    # In the runner's process, importing detectron2 or projects raises ImportError.
    code = (
        "import runpy, sys; sys.modules['detectron2'] = sys.modules['projects'] = None; "
        "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    args = [RUNNER, files[fmt], noise_png, "--min-score", "0.28", "--draw", str(tmp_path)]
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    shown = int((expected.scores >= 0.28).sum())
    assert 0 < shown < len(expected)
    assert lines[0] == f"{noise_png}: {shown} detections"
    best = int(expected.scores.argmax())
    x0, y0, x1, y1 = expected.pred_boxes.tensor[best].tolist()
    fields = lines[1].split()
    assert fields[1:6] == [
        f"{expected.scores[best]:.4f}",
        f"[{x0:.2f},",
        f"{y0:.2f},",
        f"{x1:.2f},",
        f"{y1:.2f}]",
    ]
    assert fields[6] == "mask"
    assert Image.open(tmp_path / "noise.png").size == (160, 128)


def test_trees_demo_model(trees_prepared, tmp_path):
    """The tree-crown demo (ImageNet MobileNetV2-FPN, random heads) on trees_val tiles."""
    cfg = get_cfg()
    add_cascade_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs/trees/cascade_rcnn_trees.yaml"))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    tiles = load_images(cfg, dataset="trees_val", max_images=2)
    for fmt in FORMATS:
        exported = ExportedModel(
            export_model(model, tiles[0][1], fmt, str(tmp_path), deploy_metadata(cfg))
        )
        differences = Differences()
        for name, image in tiles:
            differences.add(name, _eager(model, image), exported(image.numpy()))
        assert differences.failures() == [], (fmt, differences)
        assert differences.detections > 0
