"""
The document-layout datasets that `scripts/prepare_documents.py` makes from the R manuals:
`documents_train`, `documents_val` and `documents_test` (text lines of three classes), in
`$DETECTRON2_DATASETS/documents`. See docs/documents.md.
"""

from pathlib import Path
from typing import List, Optional, Union

from .prepared import register_prepared_splits

__all__ = ["SPLITS", "THING_CLASSES", "register_documents"]

SPLITS = ("train", "val", "test")
# COCO category ids 1, 2, 3 in this order.
THING_CLASSES = ("body", "heading", "code")


def register_documents(root: Optional[Union[str, Path]] = None, name_suffix: str = "") -> List[str]:
    """Register the three splits in `<root>/documents` (see `register_prepared_splits`)."""
    return register_prepared_splits(
        "documents",
        SPLITS,
        THING_CLASSES,
        "python scripts/prepare_documents.py --output {folder}",
        root,
        name_suffix,
    )
