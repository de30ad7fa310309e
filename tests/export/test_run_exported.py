"""
tools/deploy/run_exported.py, the standalone runner of exported models, against detectron2's
DefaultPredictor, in this process and as a command in a process without detectron2.
"""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from detectron2.data.detection_utils import read_image
from detectron2.engine import DefaultPredictor
from detectron2.layers import paste_masks_in_image
from detectron2.modeling.postprocessing import detector_postprocess

from projects.cascade.export import FORMATS, load_images, pair_detections
from tests.helpers import REPO, eager_inference, load_script, noise

RUNNER = "tools/deploy/run_exported.py"


@pytest.fixture(scope="module")
def runner():
    return load_script(RUNNER)


@pytest.fixture(scope="module")
def noise_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "noise.png"
    Image.fromarray(noise(128, 160, 5).byte().permute(1, 2, 0).numpy()).save(path)
    return str(path)


def _default_predictor(cfg, model, image_file):
    predictor = DefaultPredictor(cfg)
    predictor.model = model
    return predictor(read_image(image_file, format="BGR"))["instances"]


@pytest.mark.e2e  # exports, then runs the file as a deployment would
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ["cascade", "cascade_mask"])
def test_runner_matches_default_predictor(exports, runner, noise_png, name, fmt):
    cfg, model, files, _ = exports(name)
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
    raw = eager_inference(model, load_images(cfg, [noise_png])[0][1])
    probs = raw.pred_masks[:, 0].clone()
    boxes = detector_postprocess(raw, 128, 160).pred_boxes.tensor
    assert len(boxes) == len(expected)  # the same rows as DefaultPredictor's
    probs = paste_masks_in_image(probs, boxes, (128, 160), threshold=-1)  # probability * 255
    differ = got["masks"][partner] != expected.pred_masks.numpy()
    assert differ.sum() < 1e-4 * differ.size
    assert set(probs.numpy()[differ].tolist()) <= {127, 128}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.e2e
def test_runner_command_without_detectron2(exports, noise_png, tmp_path, fmt):
    cfg, model, files, _ = exports("cascade_mask")
    expected = _default_predictor(cfg, model, noise_png)
    # In the runner's process, importing detectron2 or projects raises ImportError.
    code = (
        "import runpy, sys; sys.modules['detectron2'] = sys.modules['projects'] = None; "
        "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    args = [
        str(REPO / RUNNER),
        files[fmt],
        noise_png,
        "--min-score",
        "0.28",
        "--draw",
        str(tmp_path),
    ]
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
