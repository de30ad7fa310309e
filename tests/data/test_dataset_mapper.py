"""CheckedDatasetMapper: an image that cannot be used gets an error naming its id and file."""

import copy
import re
import shutil

import pytest
import torch

from detectron2.data import DatasetCatalog

from projects.cascade.data import CheckedDatasetMapper
from projects.cascade.errors import DatasetError
from tests.helpers import tiny_cfg


@pytest.fixture
def tile(tmp_path, trees_prepared):
    """The dataset dict of a real tree tile, its image copied to `tmp_path` to be damaged."""
    d = copy.deepcopy(DatasetCatalog.get("trees_val")[0])
    d["file_name"] = shutil.copy(d["file_name"], tmp_path)
    return d


@pytest.mark.parametrize(
    "damage, error",
    [
        (lambda b: b[: len(b) // 2], r"(OSError|SyntaxError)"),  # truncated
        (lambda b: b"\x89PNG\r\n" + b"\0" * 100, "UnidentifiedImageError"),  # corrupt
        (lambda b: b"these bytes are no image", "UnidentifiedImageError"),
    ],
    ids=["truncated", "corrupt", "not-an-image"],
)
def test_unreadable_image_names_it(tile, damage, error):
    with open(tile["file_name"], "rb") as f:
        content = f.read()
    with open(tile["file_name"], "wb") as f:
        f.write(damage(content))
    mapper = CheckedDatasetMapper(tiny_cfg(num_classes=1), is_train=True)
    where = rf"Image id {tile['image_id']} \({re.escape(tile['file_name'])}\)"
    with pytest.raises(DatasetError, match=rf"{where} cannot be used: {error}"):
        mapper(tile)


def test_image_of_another_size_than_the_json_says(tile):
    tile["width"] = 500
    message = rf"Image id {tile['image_id']} .* cannot be used: .*Mismatched image shape"
    with pytest.raises(DatasetError, match=message):
        CheckedDatasetMapper(tiny_cfg(num_classes=1), is_train=False)(tile)


def _with_crowd(tile):
    """The tile's dataset dict with two crowd annotations added (one in each half)."""
    d = copy.deepcopy(tile)
    crowd = {"iscrowd": 1, "category_id": 0, "bbox_mode": d["annotations"][0]["bbox_mode"]}
    d["annotations"] += [
        {**crowd, "bbox": [10, 20, 100, 50]},
        {**crowd, "bbox": [250, 300, 40, 60]},
    ]
    return d


def test_crowd_regions_are_kept_when_ignored_and_dropped_otherwise(trees_prepared):
    tile = DatasetCatalog.get("trees_val")[0]
    num_boxes = sum(1 for a in tile["annotations"] if not a.get("iscrowd"))
    cfg = tiny_cfg(num_classes=1)
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (800,), 800  # 400 px tiles, doubled
    cfg.INPUT.RANDOM_FLIP = "none"

    instances = CheckedDatasetMapper(cfg, is_train=True)(_with_crowd(tile))["instances"]
    assert len(instances) == num_boxes and not instances.has("ignore_regions")  # detectron2's

    cfg.MODEL.ROI_BOX_CASCADE_HEAD.IGNORE_IOF_THRESH = 0.5
    instances = CheckedDatasetMapper(cfg, is_train=True)(_with_crowd(tile))["instances"]
    assert len(instances) == num_boxes, "crowd boxes are no ground truth"
    regions = instances.ignore_regions
    assert len(regions) == num_boxes  # an Instances field: one entry per instance ...
    expected = torch.tensor([[20, 40, 220, 140], [500, 600, 580, 720]], dtype=torch.float32)
    assert torch.equal(regions.boxes.tensor, expected)  # ... holding the image's regions, resized
    assert (
        len(instances[:3].ignore_regions) == 3
        and instances[:3].ignore_regions.boxes is regions.boxes
    )
    assert not CheckedDatasetMapper(cfg, is_train=False).keep_crowd_regions  # training only
