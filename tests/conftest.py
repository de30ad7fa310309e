import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def trees_prepared():
    """The real tree-crown datasets in their default place (idempotent: fast once prepared)."""
    subprocess.run([sys.executable, "scripts/prepare_trees.py"], cwd=REPO, check=True)
