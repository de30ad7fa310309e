"""
The CPU demos' parts that the library does not set up by itself. Importing `projects.cascade`
registers the cascade (and the MobileNetV2-FPN backbone, which a model build needs);
`register_demo()` adds the demos' datasets and the backbone's config keys. train_net.py and
the tools, benchmarks and experiments call it before they load a config.
"""

from .config_loader import register_config_keys
from .data.datasets import register_documents, register_trees
from .modeling.backbone import add_mobilenet_config

__all__ = ["register_demo"]


def register_demo() -> None:
    """
    Register the tree-crown and document datasets (found under $DETECTRON2_DATASETS), and
    have `load_config` add the MODEL.MOBILENET keys. Calling it again does nothing more.
    """
    register_trees()
    register_documents()
    register_config_keys(add_mobilenet_config)
