"""
The one way this project reads weights: `read_checkpoint` never runs code hidden in a file,
and `SafeCheckpointer`, the DetectionCheckpointer that train_net.py, the tools, benchmarks
and experiments load and save through, reads with it and saves so that a kill in the middle
of a save leaves the previous checkpoint usable.
"""

import logging
import os
import pickle
import re
from functools import partial
from typing import Any, Dict
from urllib.parse import urlparse

import torch

from detectron2.checkpoint import DetectionCheckpointer

from ..errors import CheckpointError
from ..utils import atomic_write, atomic_write_bytes

__all__ = ["SafeCheckpointer", "read_checkpoint", "load_restricted_pickle"]

logger = logging.getLogger(__name__)

# What detectron2 / Detectron model-zoo .pkl files need to unpickle: numpy arrays,
# numpy scalars and ordered dicts. dicts, lists, tuples, strings and numbers have
# opcodes of their own and need no global. `_codecs.encode` is how protocol 2
# stores bytes (an array's raw data) when Python 3 writes it.
_PICKLE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
} | {
    (f"{numpy_core}.{module}", name)
    for numpy_core in ("numpy.core", "numpy._core")  # numpy 1 and numpy 2 names
    for module, name in (
        ("multiarray", "_reconstruct"),
        ("multiarray", "scalar"),
        ("numeric", "_frombuffer"),
    )
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Refuses every global outside `_PICKLE_GLOBALS`, so no callable from the file can run."""

    def __init__(self, file, filename):
        super().__init__(file, encoding="latin1")  # Detectron's files come from Python 2
        self._filename = filename

    def find_class(self, module, name):
        if (module, name) not in _PICKLE_GLOBALS:
            raise CheckpointError(
                f"Refusing to load {self._filename}: it asks to import {module}.{name}, which "
                "could run code. Only numpy arrays, dicts, lists, tuples, strings and numbers "
                "are accepted in a .pkl checkpoint."
            )
        return super().find_class(module, name)


def load_restricted_pickle(filename):
    """Unpickle a model-zoo .pkl file, accepting numpy arrays and plain containers only."""
    with open(filename, "rb") as f:
        return _ArraysOnlyUnpickler(f, filename).load()


def read_checkpoint(filename: str) -> Dict[str, Any]:
    """
    The contents of a checkpoint file, read without running code from it: a `.pth` with
    ``torch.load(weights_only=True)``, a `.pkl` (detectron2 and Detectron model zoos) with an
    unpickler that accepts only numpy arrays and plain containers; a `.pkl` comes back as
    detectron2's loader returns it (`{"model": ..., "__author__": ...}`). An unreadable,
    truncated or malicious file is a `CheckpointError` naming it.
    """
    if not os.path.isfile(filename):
        raise CheckpointError(f"Checkpoint {filename} does not exist.")
    try:
        if filename.endswith(".pkl"):
            return _read_pkl(filename)
        with open(filename, "rb") as f:
            data = torch.load(f, map_location=torch.device("cpu"), weights_only=True)
    except CheckpointError:
        raise
    except Exception as e:
        message = str(e)
        # torch says "Unsupported global: GLOBAL x.y", or for a blocked module "unsupported
        # GLOBAL x.y whose module x is blocked".
        unsafe = re.search(r"unsupported global(?:: GLOBAL)? (\S+)", message, re.IGNORECASE)
        if unsafe:  # torch.load(weights_only=True) refused a global
            raise CheckpointError(
                f"Refusing to load {filename}: it asks to import {unsafe.group(1)}, which "
                "could run code. Only tensors and plain containers are accepted in a .pth "
                "checkpoint."
            ) from e
        reason = type(e).__name__ + (f": {message.splitlines()[0]}" if message else "")
        raise CheckpointError(
            f"Cannot load checkpoint {filename}: it is truncated, corrupt or not a "
            f"checkpoint ({reason})."
        ) from e
    if not isinstance(data, dict):
        raise CheckpointError(
            f"Cannot load checkpoint {filename}: expected a dict, found {type(data).__name__}."
        )
    return data


def _read_pkl(filename):
    """The conversions of `DetectionCheckpointer._load_file`, on a restricted unpickle."""
    data = load_restricted_pickle(filename)
    if not isinstance(data, dict):
        raise CheckpointError(
            f"Cannot load checkpoint {filename}: expected a dict, found {type(data).__name__}."
        )
    if "model" in data and "__author__" in data:  # detectron2 model zoo
        logger.info(f"Reading a file from '{data['__author__']}'")
        return data
    # Caffe2 / Detectron1 model zoo: detection models keep their weights in "blobs".
    data = data.get("blobs", data)
    data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
    return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}


def _first_nonfinite(state_dict):
    for name, value in state_dict.items():
        if torch.is_tensor(value) and value.is_floating_point():
            if not torch.isfinite(value).all():
                return name
    return None


class SafeCheckpointer(DetectionCheckpointer):
    """
    :class:`DetectionCheckpointer` that

    * saves atomically (a temporary file, then a rename), and tags `last_checkpoint`
      the same way;
    * refuses to save weights that hold NaN or Inf, so a diverged run cannot replace
      the last good checkpoint (e.g. with `model_final` when it dies on its last
      iteration);
    * reads every file with `read_checkpoint`, so a malicious, unreadable, truncated or
      missing file is a :class:`CheckpointError` naming it.
    """

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)

        bad = _first_nonfinite(data["model"])
        if bad is not None:
            logger.error(
                f"Not saving {save_file}: parameter {bad} holds NaN or Inf. The last good "
                f"checkpoint stays {self.get_checkpoint_file() or '(none)'}."
            )
            return
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(save_file, partial(torch.save, data))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write_bytes(path, last_filename_basename.encode())

    def load(self, path: str, *args, **kwargs) -> Dict[str, Any]:
        """`DetectionCheckpointer.load`, with a missing file a `CheckpointError` naming it."""
        if path:
            local = self.path_manager.get_local_path(urlparse(path)._replace(query="").geturl())
            if not os.path.isfile(local):
                raise CheckpointError(f"Checkpoint {path} does not exist.")
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename):
        if filename.endswith(".pkl"):
            return read_checkpoint(filename)
        return super()._load_file(filename)  # detectron2's handling of .pth files and URLs

    def _torch_load(self, f):
        return read_checkpoint(f)
