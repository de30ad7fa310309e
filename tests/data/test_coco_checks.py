"""
COCO json files checked as they load (coco_checks.py): every problem gets an error naming
the file, image id and annotation id.
"""

import copy
import json
import shutil
import uuid

import pytest

from detectron2.data import DatasetCatalog

from projects.cascade.data import register_coco_instances
from projects.cascade.errors import DatasetError


@pytest.fixture
def coco(tmp_path, trees_prepared):
    """Two real tree tiles and their boxes as a valid COCO dataset; each test breaks one thing."""
    image_root = tmp_path / "images"
    image_root.mkdir()
    source = json.loads((trees_prepared / "trees_val.json").read_text())
    images = source["images"][:2]
    for img in images:
        shutil.copy(trees_prepared / "images" / img["file_name"], image_root)
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
    ids=[
        "box-outside",
        "box-fully-outside",
        "zero-width",
        "negative-height",
        "nan-coordinate",
        "missing-coordinate",
        "unknown-category",
        "duplicate-image-id",
        "unknown-image-id",
        "duplicate-annotation-id",
        "missing-image-file",
        "zero-image-size",
        "empty-dataset",
    ],
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
