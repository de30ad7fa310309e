"""
Bad input. Every case gets an error naming what is wrong (the key, flag, file, image or
annotation id), or is handled correctly; where training was running, the last good
checkpoint survives.
"""
import copy
import itertools
import json
import re
import shutil
import uuid
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, get_detection_dataset_dicts
from detectron2.structures import BoxMode
from detectron2.utils.events import EventStorage

from projects.cascade.engine.launch import check_launch, load_config
from projects.cascade.data import CheckedDatasetMapper, register_coco_instances
from projects.cascade.errors import ConfigError, DatasetError
from projects.cascade.data.resumable_loader import ResumableTrainingSampler
from projects.cascade.engine.trainer import ReliableTrainer
from tests.common import build, tiny_cfg
from tests.train_cli import CONFIG, REPO, TINY, run

TREES = REPO / "datasets" / "trees"


# ----------------------------------------------------------------------------- config


def _yaml(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(f'_BASE_: "{REPO / CONFIG}"\n{text}')
    return str(path)


@pytest.mark.parametrize(
    "yaml_text, opts, message",
    [
        ("MODEL:\n  ROI_HEADS: [unclosed\n", [], r"(?s)bad\.yaml is not valid YAML.*line 3"),
        ("MODEL:\n  ROI_HEADZ:\n    NUM_CLASSES: 2\n", [], r"config key: MODEL\.ROI_HEADZ"),
        ("", ["SOLVER.MAX_ITERS", "10"], r"command-line overrides: Non-existent key: SOLVER\.MAX"),
        ("SOLVER:\n  MAX_ITER: ten\n", [], r"Type mismatch .* for config key: SOLVER\.MAX_ITER"),
        ("", ["SOLVER.BASE_LR"], r"command-line overrides: Override list has odd length"),
        (  # cascade lists of different lengths
            "",
            ["MODEL.ROI_BOX_CASCADE_HEAD.IOUS", "[0.5, 0.6]"],
            r"MODEL\.ROI_BOX_CASCADE_HEAD\.(BBOX_REG_WEIGHTS|STAGE_LOSS_WEIGHTS) has 3 entries",
        ),
    ],
    ids=["malformed-yaml", "unknown-key", "unknown-override", "wrong-type", "odd-overrides",
         "cascade-lengths"],
)
def test_bad_config_names_the_key(tmp_path, yaml_text, opts, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_yaml(tmp_path, yaml_text), opts)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match=f"Config file {tmp_path}/nope.yaml does not exist"):
        load_config(str(tmp_path / "nope.yaml"), [])


def _args(num_gpus, num_machines=1):
    return Namespace(num_gpus=num_gpus, num_machines=num_machines)


def test_num_gpus_without_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    cuda_cfg = load_config(CONFIG, ["MODEL.DEVICE", "cuda"])
    cpu_cfg = load_config(CONFIG, ["MODEL.DEVICE", "cpu"])
    with pytest.raises(ConfigError, match=r"--num-gpus 2 .* torch sees 0\. Add `MODEL.DEVICE cpu`"):
        check_launch(_args(2), cuda_cfg)
    check_launch(_args(2), cpu_cfg)  # the CPU path
    with pytest.raises(ConfigError, match="IMS_PER_BATCH = 4 does not divide among 3"):
        check_launch(_args(3), cpu_cfg)
    amp_cfg = load_config(CONFIG, ["MODEL.DEVICE", "cpu", "SOLVER.AMP.ENABLED", "True"])
    with pytest.raises(ConfigError, match="SOLVER.AMP.ENABLED True needs MODEL.DEVICE cuda"):
        check_launch(_args(1), amp_cfg)
    # CPU processes next to GPUs: detectron2's launch would pick NCCL for CPU tensors.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES="):
        check_launch(_args(2), cpu_cfg)


def test_num_gpus_without_gpus_from_the_command_line(tmp_path):
    assert torch.cuda.device_count() == 0, "this test needs a machine without GPUs"
    output = run("--num-gpus", "2", "MODEL.DEVICE", "cuda", "OUTPUT_DIR", tmp_path, expect_ok=False)
    assert "error: --num-gpus 2 with MODEL.DEVICE 'cuda' needs 2 GPU(s)" in output
    assert "Traceback" not in output


# ----------------------------------------------------------------------------- COCO json


@pytest.fixture
def coco(tmp_path, trees_prepared):
    """Two real tree tiles and their boxes as a valid COCO dataset; each test breaks one thing."""
    image_root = tmp_path / "images"
    image_root.mkdir()
    source = json.loads((TREES / "trees_val.json").read_text())
    images = source["images"][:2]
    for img in images:
        shutil.copy(TREES / "images" / img["file_name"], image_root)
    ids = {img["id"] for img in images}
    annotations = [a for a in source["annotations"] if a["image_id"] in ids]
    return {"images": images, "annotations": annotations, "categories": source["categories"]}


def _load(tmp_path, data, image_root=None, json_text=None):
    json_file = tmp_path / "dataset.json"
    json_file.write_text(json_text if json_text is not None else json.dumps(data))
    name = f"bad_{uuid.uuid4().hex}"
    register_coco_instances(name, {}, str(json_file), str(image_root or tmp_path / "images"))
    try:
        return DatasetCatalog.get(name)
    finally:
        DatasetCatalog.remove(name)


def test_valid_dataset_loads(tmp_path, coco):
    dicts = _load(tmp_path, coco)
    assert len(dicts) == 2
    assert sum(len(d["annotations"]) for d in dicts) == len(coco["annotations"]) > 10


def _box(x, y, w, h):
    def mutate(data):
        ann = data["annotations"][0]
        ann["bbox"] = [x, y, w, h]
        return rf"annotation id {ann['id']} \(image id {ann['image_id']}, '.*\.png'\): bbox"
    return mutate


def _unknown_category(data):
    data["annotations"][3]["category_id"] = 7
    return rf"annotation id {data['annotations'][3]['id']} .*: category id 7 is not in 'categories'"


def _duplicate_image_id(data):
    first, second = data["images"]
    second["id"] = first["id"]
    return rf"image id {first['id']} \('{second['file_name']}'\): duplicate image id"


def _unknown_image(data):
    data["annotations"][1]["image_id"] = 999
    return rf"annotation id {data['annotations'][1]['id']} \(image id 999\): image id 999 is not"


def _duplicate_annotation_id(data):
    data["annotations"][2]["id"] = data["annotations"][1]["id"]
    return rf"annotation id {data['annotations'][1]['id']} .*: duplicate annotation id"


def _missing_image_file(data):
    data["images"][1]["file_name"] = "gone.png"
    return rf"image id {data['images'][1]['id']} \('gone.png'\): file .*/images/gone.png does not"


def _zero_image_size(data):
    data["images"][0]["width"] = 0
    return rf"image id {data['images'][0]['id']} .*: 'width' is 0, not a positive number"


def _no_images(data):
    data["images"], data["annotations"] = [], []
    return r"dataset\.json has no images"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (_box(390, 10, 30, 20), "lies outside the 400x400 image"),
        (_box(-40, -40, 20, 20), "lies outside the 400x400 image"),
        (_box(10, 10, 0, 20), "has a width or height <= 0"),
        (_box(10, 10, 20, -5), "has a width or height <= 0"),
        (_box(float("nan"), 10, 20, 20), r"is not 4 finite numbers"),
        (_box(10, 10, 20, None), r"is not 4 finite numbers"),
        (_unknown_category, ""),
        (_duplicate_image_id, ""),
        (_unknown_image, ""),
        (_duplicate_annotation_id, ""),
        (_missing_image_file, ""),
        (_zero_image_size, ""),
        (_no_images, ""),
    ],
    ids=["box-outside", "box-fully-outside", "zero-width", "negative-height", "nan-coordinate",
         "missing-coordinate", "unknown-category", "duplicate-image-id", "unknown-image-id",
         "duplicate-annotation-id", "missing-image-file", "zero-image-size", "empty-dataset"],
)
def test_bad_coco_json_names_the_image_and_annotation(tmp_path, coco, mutate, message):
    data = copy.deepcopy(coco)
    where = mutate(data)
    with pytest.raises(DatasetError, match=f"{where}.*{message}"):
        _load(tmp_path, data)


def test_missing_or_malformed_files(tmp_path, coco):
    with pytest.raises(DatasetError, match=r"dataset\.json is not valid JSON: .*line 1"):
        _load(tmp_path, coco, json_text='{"images": [')
    with pytest.raises(DatasetError, match=f"image folder {tmp_path}/nowhere does not exist"):
        _load(tmp_path, coco, image_root=tmp_path / "nowhere")
    register_coco_instances("missing_json", {}, str(tmp_path / "absent.json"), str(tmp_path))
    with pytest.raises(DatasetError, match=f"annotation file {tmp_path}/absent.json does not"):
        DatasetCatalog.get("missing_json")
    DatasetCatalog.remove("missing_json")


# ----------------------------------------------------------------------------- images


def _break_first_image(tmp_path, coco, damage):
    dicts = _load(tmp_path, coco)
    path = dicts[0]["file_name"]
    with open(path, "rb") as f:
        content = f.read()
    with open(path, "wb") as f:
        f.write(damage(content))
    return dicts[0]


@pytest.mark.parametrize(
    "damage, error",
    [
        (lambda b: b[: len(b) // 2], r"(OSError|SyntaxError)"),  # truncated
        (lambda b: b"\x89PNG\r\n" + b"\0" * 100, "UnidentifiedImageError"),  # corrupt
        (lambda b: b"these bytes are no image", "UnidentifiedImageError"),
    ],
    ids=["truncated", "corrupt", "not-an-image"],
)
def test_unreadable_image_names_it(tmp_path, coco, damage, error):
    d = _break_first_image(tmp_path, coco, damage)
    mapper = CheckedDatasetMapper(tiny_cfg(num_classes=1), is_train=True)
    where = rf"Image id {d['image_id']} \({re.escape(d['file_name'])}\)"
    with pytest.raises(DatasetError, match=rf"{where} cannot be used: {error}"):
        mapper(d)


def test_image_of_another_size_than_the_json_says(tmp_path, coco):
    coco["images"][0]["width"] = 500
    d = _load(tmp_path, coco)[0]
    message = rf"Image id {d['image_id']} .* cannot be used: .*Mismatched image shape"
    with pytest.raises(DatasetError, match=message):
        CheckedDatasetMapper(tiny_cfg(num_classes=1), is_train=False)(d)


# ----------------------------------------------------------------------------- handled


def _image_dict(tmp_path, width, height, boxes):
    path = tmp_path / f"{width}x{height}.png"
    pixels = np.random.RandomState(0).randint(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    annotations = [
        {"bbox": b, "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 0} for b in boxes
    ]
    return {"file_name": str(path), "image_id": 1, "width": width, "height": height,
            "annotations": annotations}


def _train_step_and_inference(d):
    cfg = tiny_cfg(num_classes=1)
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (128,), 256
    model = build(cfg)
    with EventStorage():
        losses = model([CheckedDatasetMapper(cfg, is_train=True)(d)])
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total), losses
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        instances = model([CheckedDatasetMapper(cfg, is_train=False)(d)])[0]["instances"]
    assert instances.image_size == (d["height"], d["width"])
    boxes = instances.pred_boxes.tensor
    assert len(boxes) > 0 and torch.isfinite(boxes).all()
    assert (boxes[:, 2] <= d["width"]).all() and (boxes[:, 3] <= d["height"]).all()


@pytest.mark.parametrize("width, height", [(1600, 16), (16, 1600)], ids=["100:1", "1:100"])
def test_extreme_aspect_ratio_trains_and_predicts(tmp_path, width, height):
    # Resized to 128 px on its short side, capped at 256 px: a 256x3 image.
    box = [10, 2, 60, 10] if width > height else [2, 10, 10, 60]
    _train_step_and_inference(_image_dict(tmp_path, width, height, [box]))


def test_thousands_of_boxes_train_and_predict(tmp_path):
    corners = np.random.RandomState(1).uniform(0, 390, (3000, 2))
    boxes = [[float(x), float(y), 8.0, 8.0] for x, y in corners]
    _train_step_and_inference(_image_dict(tmp_path, 400, 400, boxes))


# ----------------------------------------------------------------------------- in training


def test_nan_loss_names_the_iteration_and_keeps_the_last_checkpoint(tmp_path, trees_prepared):
    opts = [*TINY, "SOLVER.CHECKPOINT_PERIOD", "1", "OUTPUT_DIR", str(tmp_path)]
    trainer = ReliableTrainer(load_config(CONFIG, [*opts, "SOLVER.MAX_ITER", "2"]))
    trainer.resume_or_load(resume=False)
    trainer.train()
    good = {f.name: f.read_bytes() for f in tmp_path.glob("*.pth")}
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"

    # Resumed with a zero pixel std: every input becomes inf or NaN.
    diverging = [*opts, "SOLVER.MAX_ITER", "4", "MODEL.PIXEL_STD", "[0.0, 0.0, 0.0]"]
    trainer = ReliableTrainer(load_config(CONFIG, diverging))
    trainer.resume_or_load(resume=True)
    # detectron2's RPN or its loss check, whichever meets the NaN first, names the iteration.
    with pytest.raises(FloatingPointError, match=r"NaN.*at iteration=2\b"):
        trainer.train()
    assert {f.name: f.read_bytes() for f in tmp_path.glob("*.pth")} == good
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"


def test_truncated_image_met_in_training_keeps_the_checkpoints(tmp_path, trees_prepared):
    """A copy of the tree datasets whose image for iteration 2 is truncated."""
    root = tmp_path / "datasets"
    (root / "trees" / "images").mkdir(parents=True)
    for f in TREES.glob("*.json"):
        shutil.copy(f, root / "trees")
    for f in (TREES / "images").iterdir():
        (root / "trees" / "images" / f.name).symlink_to(f)
    # The image the data stream puts first in iteration 2 (2 images per batch).
    dicts = get_detection_dataset_dicts(["trees_train"])
    sampler = ResumableTrainingSampler([0] * len(dicts), batch_size=2, seed=7)
    _, _, index = next(itertools.islice(sampler, 4, None))
    victim = root / "trees" / "images" / Path(dicts[index]["file_name"]).name
    content = victim.read_bytes()
    victim.unlink()
    victim.write_bytes(content[: len(content) // 3])

    out = tmp_path / "out"
    output = run(*TINY, "SEED", "7", "SOLVER.MAX_ITER", "5", "SOLVER.CHECKPOINT_PERIOD", "1",
                 "OUTPUT_DIR", out, expect_ok=False, extra_env={"DETECTRON2_DATASETS": str(root)})
    last_line = output.strip().splitlines()[-1]
    assert re.match(
        rf"error: Image id {dicts[index]['image_id']} \({re.escape(str(victim))}\) cannot be",
        last_line,
    ), last_line
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"
    for name in ("model_0000000.pth", "model_0000001.pth"):
        torch.load(out / name, weights_only=True)
