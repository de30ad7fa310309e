import subprocess
import sys
from pathlib import Path

import pytest
import torch

from projects.cascade import threaded_pooler

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def trees_prepared():
    """The real tree-crown datasets in their default place (idempotent: fast once prepared)."""
    subprocess.run([sys.executable, "scripts/prepare_trees.py"], cwd=REPO, check=True)


@pytest.fixture
def split_calls(monkeypatch):
    """ThreadedROIPooler's requests for worker threads: empty if it never split its boxes."""
    calls = []
    original = threaded_pooler._worker_pool

    def counting(num_workers):
        calls.append(num_workers)
        return original(num_workers)

    monkeypatch.setattr(threaded_pooler, "_worker_pool", counting)
    return calls


@pytest.fixture
def set_threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)
