"""
Export to TorchScript and ONNX (exporter.py) and the exported models run by runtime.py,
against PyTorch eager.
"""

import os

import pytest
import torch

from projects.cascade.config_loader import load_config
from projects.cascade.engine.predictor import build_trained_model
from projects.cascade.export import (
    FORMATS,
    Differences,
    ExportedModel,
    deploy_metadata,
    export_model,
    load_images,
)
from tests.helpers import (
    CONFIG,
    EXPORT_MODELS,
    REPO,
    build,
    eager_inference,
    featureless,
    noise,
    tiny_export_cfg,
)


# End to end: each traces a model, writes the file, and runs it in TorchScript or onnxruntime.
@pytest.mark.e2e
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", EXPORT_MODELS)
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


def test_export_errors(tmp_path):
    cfg = tiny_export_cfg()
    model = build(cfg, seed=0)
    image = noise(128, 160, 0)
    with pytest.raises(ValueError, match="model.eval"):
        export_model(model, image, "onnx", str(tmp_path), deploy_metadata(cfg))
    model.eval()
    with pytest.raises(ValueError, match="opset >= 16"):
        export_model(model, image, "onnx", str(tmp_path), deploy_metadata(cfg), opset=11)
    with pytest.raises(ValueError, match="no detections"):
        export_model(
            model, featureless(model, 64, 96), "torchscript", str(tmp_path), deploy_metadata(cfg)
        )
    with pytest.raises(ValueError, match="Unknown format"):
        export_model(model, image, "caffe2", str(tmp_path), deploy_metadata(cfg))
    assert os.listdir(tmp_path) == []
    cfg.INPUT.FORMAT = "YUV-BT.601"
    with pytest.raises(ValueError, match="INPUT.FORMAT"):
        deploy_metadata(cfg)


@pytest.mark.e2e
def test_trees_demo_model(trees_prepared, tmp_path):
    """The tree-crown demo (ImageNet MobileNetV2-FPN, random heads) on trees_val tiles."""
    cfg = load_config(str(REPO / CONFIG))
    torch.manual_seed(0)
    model = build_trained_model(cfg)  # the ImageNet backbone of MODEL.WEIGHTS
    tiles = load_images(cfg, dataset="trees_val", max_images=2)
    for fmt in FORMATS:
        exported = ExportedModel(
            export_model(model, tiles[0][1], fmt, str(tmp_path), deploy_metadata(cfg))
        )
        differences = Differences()
        for name, image in tiles:
            differences.add(name, eager_inference(model, image), exported(image.numpy()))
        assert differences.failures() == [], (fmt, differences)
        assert differences.detections > 0
