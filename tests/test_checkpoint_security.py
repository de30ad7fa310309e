"""Loading a checkpoint never runs code from it; model-zoo .pkl checkpoints still load."""
import builtins
import collections
import pickle
import re

import numpy as np
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer

from projects.cascade.engine.checkpoint import SafeCheckpointer
from projects.cascade.errors import CheckpointError
from tests.common import build, tiny_cfg
from tests.train_cli import run


class _WritesAFile:
    """Unpickling this object runs `exec`, which writes `path`."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return builtins.exec, (f"open({self.path!r}, 'w').write('pwned')",)


def _zoo_checkpoint(model, payload=None):
    """A dict in detectron2's model-zoo .pkl format, optionally carrying a payload."""
    data = {
        "model": {k: v.numpy().copy() for k, v in model.state_dict().items()},
        "__author__": "Detectron2 Model Zoo",
        "matching_heuristics": True,
    }
    if payload is not None:
        data["info"] = payload
    return data


def test_malicious_pkl_is_refused_and_runs_nothing(tmp_path):
    model = build(tiny_cfg())
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(_zoo_checkpoint(model, _WritesAFile(marker)), protocol=2))

    # Control: detectron2's own loader unpickles it, and the file appears.
    DetectionCheckpointer(model).load(str(path))
    assert marker.read_text() == "pwned"
    marker.unlink()

    refused = rf"Refusing to load {re.escape(str(path))}: .*__builtin__\.exec"  # protocol 2's name
    with pytest.raises(CheckpointError, match=refused):
        SafeCheckpointer(model).load(str(path))
    assert not marker.exists()


def test_malicious_pth_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "model_final.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "extra": _WritesAFile(marker)}, path)

    torch.load(path, weights_only=False)  # control: a plain unpickle runs the payload
    assert marker.exists()
    marker.unlink()

    with pytest.raises(CheckpointError, match=rf"Refusing to load {re.escape(str(path))}: .*exec"):
        SafeCheckpointer(torch.nn.Linear(2, 2)).load(str(path))
    assert not marker.exists()


def test_malicious_weights_through_train_net_eval_only(tmp_path):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"model": {}, "__author__": _WritesAFile(marker)}, protocol=2))
    output = run("--eval-only", "MODEL.WEIGHTS", path, "OUTPUT_DIR", tmp_path, expect_ok=False)
    assert f"error: Refusing to load {path}" in output
    assert "Traceback" not in output
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_model_zoo_pkl_still_loads(tmp_path, protocol):
    source = build(tiny_cfg(), seed=1)
    data = _zoo_checkpoint(source)
    data["model"] = collections.OrderedDict(data["model"])
    data["model"]["roi_heads.box_predictor.0.cls_score.bias"] += np.float32(0.5)
    data["matching_heuristics"] = np.bool_(True)  # a numpy scalar
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))

    target = build(tiny_cfg(), seed=2)
    SafeCheckpointer(target).load(str(path))
    for name, value in target.state_dict().items():
        if name in data["model"]:
            np.testing.assert_array_equal(value.numpy(), data["model"][name], err_msg=name)
    assert not torch.equal(
        target.state_dict()["roi_heads.box_predictor.0.cls_score.bias"],
        source.state_dict()["roi_heads.box_predictor.0.cls_score.bias"],
    )
