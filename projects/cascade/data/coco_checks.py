"""
Checks of COCO-format datasets, so that a bad file, box or image stops the run with an
error naming the dataset, the file and the image or annotation id.

Without them, a bad annotation surfaces as a crash deep inside training, or not at
all: pycocotools keeps one of two images that share an id and hands it both images'
boxes, and detectron2 drops annotations whose image id is unknown.

Register your own COCO json with :func:`register_coco_instances` from this module
(same arguments as detectron2's) and it is checked every time it is loaded.
"""

import json
import math
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from ..errors import DatasetError

__all__ = ["check_coco_json", "load_checked_coco_json", "register_coco_instances"]

# Annotation tools round box corners; a box may pass the image border by this much.
_EDGE_TOLERANCE = 1.0
_MAX_REPORTED = 10


def _read_json(json_file, dataset_name):
    if not os.path.isfile(json_file):
        raise DatasetError(f"Dataset '{dataset_name}': annotation file {json_file} does not exist.")
    try:
        with open(json_file) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"Dataset '{dataset_name}': {json_file} is not valid JSON: {e}.") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(
            f"Dataset '{dataset_name}': {json_file} is not a COCO file: it needs a list "
            "under the key 'images'."
        )
    return data


def _image_problems(images, image_root):
    """The problems of the 'images' list, and the images by id."""
    problems, by_id = [], {}
    for img in images:
        image_id, file_name = img.get("id"), img.get("file_name")
        where = f"image id {image_id} ({file_name!r})"
        if image_id in by_id:
            problems.append(
                f"{where}: duplicate image id, also used by {by_id[image_id].get('file_name')!r}"
            )
            continue
        by_id[image_id] = img
        if not isinstance(file_name, str):
            problems.append(f"{where}: no 'file_name'")
        elif not os.path.isfile(os.path.join(image_root, file_name)):
            problems.append(f"{where}: file {os.path.join(image_root, file_name)} does not exist")
        for key in ("width", "height"):
            value = img.get(key)
            if not isinstance(value, (int, float)) or not value > 0:
                problems.append(f"{where}: '{key}' is {value!r}, not a positive number")
    return problems, by_id


def _box_problem(bbox, img):
    """Why `bbox` ([x, y, w, h]) is unusable in image `img`, or None."""
    if not (
        isinstance(bbox, list)
        and len(bbox) == 4
        and all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)
    ):
        return f"bbox {bbox!r} is not 4 finite numbers [x, y, width, height]"
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return f"bbox {bbox} has a width or height <= 0"
    width, height = img.get("width"), img.get("height")
    if isinstance(width, (int, float)) and isinstance(height, (int, float)):
        t = _EDGE_TOLERANCE
        if x < -t or y < -t or x + w > width + t or y + h > height + t:
            return f"bbox {bbox} lies outside the {width}x{height} image"
    return None


def _annotation_problems(annotations, images_by_id, category_ids):
    problems, seen_ids = [], set()
    for ann in annotations:
        ann_id = ann.get("id")
        image_id = ann.get("image_id")
        img = images_by_id.get(image_id)
        where = f"annotation id {ann_id} (image id {image_id}"
        where += f", {img.get('file_name')!r})" if img is not None else ")"
        if ann_id in seen_ids:
            problems.append(f"{where}: duplicate annotation id")
        seen_ids.add(ann_id)
        if img is None:
            problems.append(f"{where}: image id {image_id} is not in 'images'")
            continue
        if ann.get("category_id") not in category_ids:
            problems.append(
                f"{where}: category id {ann.get('category_id')!r} is not in 'categories' "
                f"(known: {sorted(category_ids)})"
            )
        box_problem = _box_problem(ann.get("bbox"), img)
        if box_problem:
            problems.append(f"{where}: {box_problem}")
    return problems


def check_coco_json(json_file, image_root, dataset_name):
    """
    Check a COCO-format json file and its image folder; raise :class:`DatasetError`
    listing the first problems found, each naming the image or annotation id.

    Checked: the file exists and parses; the image folder exists; there is at least
    one image; image ids are unique, every image file exists and its width and
    height are positive; annotation ids are unique and their image and category ids
    exist; every box is 4 finite numbers with a positive width and height, inside its
    image. Image contents are checked when they are read
    (:class:`~projects.cascade.data.dataset_mapper.CheckedDatasetMapper`).
    """
    data = _read_json(json_file, dataset_name)
    if not os.path.isdir(image_root):
        raise DatasetError(f"Dataset '{dataset_name}': image folder {image_root} does not exist.")
    if not data["images"]:
        raise DatasetError(f"Dataset '{dataset_name}': {json_file} has no images.")
    problems, images_by_id = _image_problems(data["images"], image_root)
    category_ids = {c.get("id") for c in data.get("categories", [])}
    problems += _annotation_problems(data.get("annotations", []), images_by_id, category_ids)
    if problems:
        shown = "\n  ".join(problems[:_MAX_REPORTED])
        more = len(problems) - _MAX_REPORTED
        raise DatasetError(
            f"Dataset '{dataset_name}' ({json_file}) has {len(problems)} problem(s):\n  {shown}"
            + (f"\n  ... and {more} more" if more > 0 else "")
        )


def load_checked_coco_json(json_file, image_root, dataset_name):
    """`check_coco_json`, then detectron2's `load_coco_json` (which parses the file again)."""
    check_coco_json(json_file, image_root, dataset_name)
    return load_coco_json(json_file, image_root, dataset_name)


def register_coco_instances(name, metadata, json_file, image_root):
    """detectron2's `register_coco_instances`, loading through `load_checked_coco_json`."""
    DatasetCatalog.register(name, lambda: load_checked_coco_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco", **metadata
    )
