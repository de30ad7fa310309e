"""
Datasets that a script of this repository prepares in COCO format (the tree crowns, the
documents), found under `$DETECTRON2_DATASETS` as detectron2 finds its own, and registered
by name. Registration only records paths, so it works before the data is prepared; loading
an unprepared split raises an error that gives the command which prepares it.
"""

import os
from pathlib import Path
from typing import List, Optional, Sequence, Union

from detectron2.data import DatasetCatalog, MetadataCatalog

from ...errors import DatasetError
from ..coco_checks import load_checked_coco_json

__all__ = ["datasets_root", "dataset_folder", "register_prepared_splits"]


def datasets_root() -> Path:
    """`$DETECTRON2_DATASETS`, else `datasets/` in the working folder (detectron2's rule)."""
    return Path(os.environ.get("DETECTRON2_DATASETS", "datasets")).absolute()


def dataset_folder(name: str, root: Optional[Union[str, Path]] = None) -> Path:
    """Where the prepared dataset `name` lives: `<root>/<name>`, `root` defaulting as above."""
    return Path(root if root is not None else datasets_root()).absolute() / name


def register_prepared_splits(
    name: str,
    splits: Sequence[str],
    thing_classes: Sequence[str],
    prepare_command: str,
    root: Optional[Union[str, Path]] = None,
    name_suffix: str = "",
) -> List[str]:
    """
    Register `<name>_<split><name_suffix>` for each split: the COCO file
    `<folder>/<name>_<split>.json` with its images in `<folder>/images`, where
    `folder = dataset_folder(name, root)`.

    Args:
        prepare_command: the command that prepares the data, for the error an unprepared
            split raises; `{folder}` in it is replaced by the folder.
        name_suffix: appended to every name, so that a second copy (a test's temporary
            preparation) can be registered beside the default one.

    Returns:
        The registered names. Registering a name again for the same file does nothing;
        for another file it is an error.
    """
    folder = dataset_folder(name, root)
    image_root = folder / "images"
    names = []
    for split in splits:
        dataset = f"{name}_{split}{name_suffix}"
        json_file = str(folder / f"{name}_{split}.json")
        names.append(dataset)
        if dataset in DatasetCatalog.list():
            registered = MetadataCatalog.get(dataset).get("json_file")
            if registered != json_file:
                raise DatasetError(
                    f"Dataset '{dataset}' is already registered with json_file={registered}; "
                    f"cannot register it again with {json_file}: use another name_suffix."
                )
            continue
        hint = prepare_command.format(folder=folder)
        DatasetCatalog.register(
            dataset,
            lambda d=dataset, j=json_file, h=hint: _load_split(d, j, image_root, h),
        )
        # What detectron2's register_coco_instances sets.
        MetadataCatalog.get(dataset).set(
            json_file=json_file,
            image_root=str(image_root),
            evaluator_type="coco",
            thing_classes=list(thing_classes),
        )
    return names


def _load_split(dataset, json_file, image_root, prepare_command):
    if not os.path.isfile(json_file):
        raise DatasetError(
            f"Dataset '{dataset}' is not prepared: {json_file} does not exist. Run "
            f"`{prepare_command}` first."
        )
    return load_checked_coco_json(json_file, str(image_root), dataset)
