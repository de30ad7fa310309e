"""
SafeCheckpointer: loading a checkpoint never runs code from it, and model-zoo .pkl
checkpoints still load; a kill in the middle of a save leaves the previous checkpoint
usable; corrupt checkpoints give an error naming the file; non-finite weights are not saved.
"""

import builtins
import collections
import pickle
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from detectron2.checkpoint import DetectionCheckpointer

from projects.cascade.engine.checkpoint import SafeCheckpointer
from projects.cascade.errors import CheckpointError
from tests.helpers import REPO, build, env, run, tiny_cfg


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


@pytest.mark.e2e
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


_DIE_DURING_SECOND_SAVE = """
import os, signal, sys, torch
from torch import nn
from detectron2.checkpoint import DetectionCheckpointer
from projects.cascade.engine.checkpoint import SafeCheckpointer

checkpointer_class = {"safe": SafeCheckpointer, "detectron2": DetectionCheckpointer}[sys.argv[2]]
model = nn.Linear(8, 8)
nn.init.constant_(model.weight, 1.0)
checkpointer = checkpointer_class(model, save_dir=sys.argv[1])
checkpointer.save("model_final")  # a finished run

def killed_while_writing(obj, f):
    f.write(b"PK\\x03\\x04" + b"\\0" * 1000)  # the first bytes of a zip
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

# The run is resumed with a larger SOLVER.MAX_ITER and saves model_final again.
model.weight.data.fill_(2.0)
torch.save = killed_while_writing
checkpointer.save("model_final")
"""


def _kill_during_save(folder, checkpointer):
    folder.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", _DIE_DURING_SECOND_SAVE, str(folder), checkpointer],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr


@pytest.mark.e2e
def test_kill_during_save_leaves_last_checkpoint_loadable(tmp_path):
    # Control: detectron2's checkpointer overwrites model_final.pth in place, so the
    # same kill leaves a truncated file that `last_checkpoint` points to.
    _kill_during_save(tmp_path / "detectron2", "detectron2")
    with pytest.raises(Exception):  # noqa: B017  (whichever error: the file is unusable)
        torch.load(tmp_path / "detectron2" / "model_final.pth", weights_only=True)

    _kill_during_save(tmp_path / "safe", "safe")
    for f in (tmp_path / "safe").glob("*.pth"):
        torch.load(f, weights_only=True)  # no truncated checkpoint anywhere
    model = nn.Linear(8, 8)
    checkpointer = SafeCheckpointer(model, save_dir=str(tmp_path / "safe"))
    checkpointer.resume_or_load("", resume=True)
    assert torch.equal(model.weight, torch.ones(8, 8)), "the previous model_final must load"


def _write_checkpoint(folder, name, content):
    path = folder / name
    path.write_bytes(content)
    (folder / "last_checkpoint").write_text(name)
    return path


def _good_checkpoint_bytes(tmp_path):
    SafeCheckpointer(nn.Linear(8, 8), save_dir=str(tmp_path)).save("good")
    return (tmp_path / "good.pth").read_bytes()


@pytest.mark.parametrize(
    "name, content",
    [
        ("model_0000009.pth", lambda good: good[: len(good) // 2]),  # truncated
        ("model_0000009.pth", lambda good: b""),  # empty
        ("model_0000009.pth", lambda good: b"not a checkpoint at all" * 10),
        ("model_0000009.pkl", lambda good: b"\x80\x02}q\x00(X\x05"),  # truncated pickle
    ],
)
def test_corrupt_checkpoint_is_a_clear_error_naming_the_file(tmp_path, name, content):
    path = _write_checkpoint(tmp_path, name, content(_good_checkpoint_bytes(tmp_path)))
    checkpointer = SafeCheckpointer(nn.Linear(8, 8), save_dir=str(tmp_path))
    with pytest.raises(CheckpointError, match=f"Cannot load checkpoint {path}"):
        checkpointer.resume_or_load("", resume=True)


def test_nonfinite_weights_do_not_replace_the_last_good_checkpoint(tmp_path, caplog):
    model = nn.Linear(8, 8)
    checkpointer = SafeCheckpointer(model, save_dir=str(tmp_path))
    checkpointer.save("model_0000001")
    good = (tmp_path / "model_0000001.pth").read_bytes()
    model.bias.data[3] = float("nan")
    checkpointer.save("model_final")
    assert not (tmp_path / "model_final.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert (tmp_path / "model_0000001.pth").read_bytes() == good
    assert "parameter bias holds NaN or Inf" in caplog.text
