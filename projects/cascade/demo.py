"""
The CPU demos, which the library does not set up by itself: importing `projects.cascade`
registers the cascade, and `register_demo()` adds the demos' datasets. `train_net.py`, the
tools, benchmarks and experiments call it before they load a config.
"""

from .data.datasets import register_trees

__all__ = ["register_demo"]


def register_demo() -> None:
    """Register the tree-crown datasets (found under $DETECTRON2_DATASETS)."""
    register_trees()
