"""
Register the tree-crown datasets made by ``scripts/prepare_trees.py``:
``trees_train``, ``trees_val`` and ``trees_test`` (one class, ``tree``).

They live in ``$DETECTRON2_DATASETS/trees`` (default ``<repo>/datasets/trees``).
Registration only records paths, so importing this module works before the data
is prepared; loading an unprepared split raises an error saying how to prepare it.
"""

import os
from pathlib import Path

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..coco_checks import load_checked_coco_json

__all__ = ["SPLITS", "register_trees"]

SPLITS = ("train", "val", "test")
THING_CLASSES = ["tree"]

_REPO_ROOT = Path(__file__).resolve().parents[4]


def _default_root():
    return Path(os.environ.get("DETECTRON2_DATASETS", _REPO_ROOT / "datasets"))


def _load_split(name, json_file, image_root):
    if not os.path.isfile(json_file):
        raise FileNotFoundError(
            f"Dataset '{name}' is not prepared: {json_file} does not exist. "
            f"Run `python scripts/prepare_trees.py --output {image_root.parent}` first."
        )
    return load_checked_coco_json(json_file, str(image_root), name)


def register_trees(root=None, name_suffix=""):
    """
    Register the three splits found under ``<root>/trees`` as ``trees_<split><name_suffix>``.

    Args:
        root: datasets folder; default ``$DETECTRON2_DATASETS``, else ``<repo>/datasets``.
        name_suffix: appended to every name, so a second copy (e.g. a test's
            temporary preparation) can be registered next to the default one.

    Returns:
        The registered dataset names. Registering the same name and files again is a
        no-op (the module may be imported more than once); the same name for other
        files is an error.
    """
    trees_dir = Path(root if root is not None else _default_root()) / "trees"
    image_root = trees_dir / "images"
    names = []
    for split in SPLITS:
        name = f"trees_{split}{name_suffix}"
        json_file = str(trees_dir / f"trees_{split}.json")
        names.append(name)
        if name in DatasetCatalog.list():
            registered = MetadataCatalog.get(name).get("json_file")
            if registered != json_file:
                raise ValueError(
                    f"Dataset '{name}' is already registered with json_file={registered}, "
                    f"cannot register it again with {json_file}; use another name_suffix."
                )
            continue
        DatasetCatalog.register(
            name, lambda name=name, json_file=json_file: _load_split(name, json_file, image_root)
        )
        # The same metadata register_coco_instances would set.
        MetadataCatalog.get(name).set(
            json_file=json_file,
            image_root=str(image_root),
            evaluator_type="coco",
            thing_classes=list(THING_CLASSES),
        )
    return names


register_trees()
