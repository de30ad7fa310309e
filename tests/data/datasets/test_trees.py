"""projects/cascade/data/datasets/trees.py: the tree-crown datasets' registration."""
import json
from pathlib import Path

import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from projects.cascade.data.datasets import datasets_root, trees
from projects.cascade.demo import register_demo
from projects.cascade.errors import DatasetError

TILE = 400


def test_root_is_detectron2_datasets_else_the_working_folders(monkeypatch, tmp_path):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "data"))
    assert datasets_root() == tmp_path / "data"
    monkeypatch.delenv("DETECTRON2_DATASETS")
    monkeypatch.chdir(tmp_path)  # never the package's own folder
    assert datasets_root() == tmp_path / "datasets"


@pytest.fixture
def registered():
    """Register under test names; unregister afterwards so the global catalogs stay clean."""
    names = []

    def register(root, suffix):
        names.extend(trees.register_trees(root, name_suffix=suffix))
        return names[-3:]

    yield register
    for name in set(names):
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_register_demo_registers_the_default_names():
    register_demo()
    for split in ("train", "val", "test"):
        assert f"trees_{split}" in DatasetCatalog.list()
        meta = MetadataCatalog.get(f"trees_{split}")
        assert meta.json_file == str(datasets_root() / "trees" / f"trees_{split}.json")
        assert meta.evaluator_type == "coco" and meta.thing_classes == ["tree"]


def test_dataset_catalog_loads_prepared_split(trees_prepared, registered):
    val = json.loads((trees_prepared / "trees_val.json").read_text())
    names = registered(trees_prepared.parent, "_pytest")
    assert names == ["trees_train_pytest", "trees_val_pytest", "trees_test_pytest"]
    dicts = DatasetCatalog.get("trees_val_pytest")
    assert len(dicts) == len(val["images"])
    annotations = [a for d in dicts for a in d["annotations"]]
    assert len(annotations) == len(val["annotations"])
    assert all(a["bbox_mode"] == BoxMode.XYWH_ABS and a["category_id"] == 0 for a in annotations)
    assert all(Path(d["file_name"]).is_file() for d in dicts)
    assert all((d["width"], d["height"]) == (TILE, TILE) for d in dicts)
    assert MetadataCatalog.get("trees_val_pytest").thing_classes == ["tree"]


def test_unprepared_split_says_how_to_prepare(tmp_path, registered):
    registered(tmp_path, "_missing")
    with pytest.raises(DatasetError, match="prepare_trees.py"):
        DatasetCatalog.get("trees_train_missing")


def test_double_registration(tmp_path, registered):
    first = registered(tmp_path, "_twice")
    assert trees.register_trees(tmp_path, name_suffix="_twice") == first
    with pytest.raises(DatasetError, match="already registered"):
        trees.register_trees(tmp_path / "elsewhere", name_suffix="_twice")
