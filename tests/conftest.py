import logging

import pytest

from projects.cascade.data.datasets import dataset_folder
from projects.cascade.demo import register_demo
from tests.helpers import load_script

# The suite runs the demos' configs and data, as train_net.py does.
register_demo()


@pytest.fixture(scope="session")
def trees_prepared():
    """The folder of the real tree-crown datasets in their default place, prepared if absent."""
    prepare_trees = load_script("scripts/prepare_trees.py")
    folder = dataset_folder("trees")
    prepare_trees.prepare(folder)
    return folder


@pytest.fixture(autouse=True)
def _restore_loggers():
    """
    Tools called in-process set up detectron2's loggers as when they run (handlers, no
    propagation to the root); the next tests expect the loggers as they were.
    """
    names = ("projects.cascade", "detectron2", "fvcore")
    saved = {
        n: (logging.getLogger(n).propagate, list(logging.getLogger(n).handlers)) for n in names
    }
    yield
    for name, (propagate, handlers) in saved.items():
        logger = logging.getLogger(name)
        logger.propagate = propagate
        logger.handlers[:] = handlers
