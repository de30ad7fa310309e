import pytest

from tests.helpers import load_script


@pytest.fixture(scope="session")
def trees_prepared():
    """The folder of the real tree-crown datasets in their default place, prepared if absent."""
    prepare_trees = load_script("scripts/prepare_trees.py")
    folder = prepare_trees.default_output_dir()
    prepare_trees.prepare(folder)
    return folder
