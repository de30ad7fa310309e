"""The demos' datasets. Nothing registers on import: `projects.cascade.demo` does it."""

from .documents import register_documents
from .prepared import dataset_folder, datasets_root, register_prepared_splits
from .trees import register_trees

__all__ = [
    "datasets_root",
    "dataset_folder",
    "register_prepared_splits",
    "register_documents",
    "register_trees",
]
