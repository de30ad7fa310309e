import pytest

from projects.cascade.data.datasets import dataset_folder
from tests.helpers import load_script


@pytest.fixture(scope="session")
def trees_prepared():
    """The folder of the real tree-crown datasets in their default place, prepared if absent."""
    prepare_trees = load_script("scripts/prepare_trees.py")
    folder = dataset_folder("trees")
    prepare_trees.prepare(folder)
    return folder
