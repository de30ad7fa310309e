"""
The tree-crown datasets that `scripts/prepare_trees.py` makes: `trees_train`, `trees_val`
and `trees_test` (one class, `tree`), in `$DETECTRON2_DATASETS/trees`.
"""

from pathlib import Path
from typing import List, Optional, Union

from .prepared import register_prepared_splits

__all__ = ["SPLITS", "THING_CLASSES", "register_trees"]

SPLITS = ("train", "val", "test")
THING_CLASSES = ("tree",)


def register_trees(root: Optional[Union[str, Path]] = None, name_suffix: str = "") -> List[str]:
    """Register the three splits in `<root>/trees` (see `register_prepared_splits`)."""
    return register_prepared_splits(
        "trees",
        SPLITS,
        THING_CLASSES,
        "python scripts/prepare_trees.py --output {folder}",
        root,
        name_suffix,
    )
