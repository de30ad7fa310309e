"""
Files: writing them so that a kill leaves the old file or the new one, never a part; and
the `cascade://` paths of the files scripts/setup.sh prepares.
"""

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Union

from iopath.common.file_io import PathHandler, get_cache_dir

from detectron2.utils.file_io import PathManager

from ..errors import CheckpointError

__all__ = ["atomic_write", "atomic_write_bytes", "sha256_of", "CacheHandler", "cache_path"]


def atomic_write(path: Union[str, Path], write: Callable[[BinaryIO], None]) -> None:
    """
    Call `write(f)` on a new temporary file beside `path` (binary mode), flush it to disk,
    then rename it over `path`. A rename within a folder is atomic, so a reader (a resume,
    the next preparation) finds the whole old file or the whole new one. Temporary files
    are named `.<name>.*.tmp`; a failed write removes its own.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> None:
    """`atomic_write` of `data`."""
    atomic_write(path, lambda f: f.write(data))


def sha256_of(path: Union[str, Path]) -> str:
    """The sha256 of a file's bytes, read in chunks (packages and wheels can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class CacheHandler(PathHandler):
    """
    `cascade://NAME` is the file NAME in this project's folder of the local iopath cache
    (`$FVCORE_CACHE`, else ~/.torch/iopath_cache, as detectron2's `detectron2://` files),
    where scripts/setup.sh writes what it prepares once, such as the demo backbone's ImageNet
    weights. Nothing is ever downloaded: a missing file is an error saying how to make it.
    """

    PREFIX = "cascade://"

    def _get_supported_prefixes(self):
        return [self.PREFIX]

    def _get_local_path(self, path: str, **kwargs) -> str:
        del kwargs  # force=...: nothing to download again
        local = str(cache_path(path))
        if not os.path.isfile(local):
            raise CheckpointError(
                f"{path} is {local}, which does not exist: `bash scripts/setup.sh` makes it."
            )
        return local

    def _open(self, path: str, mode: str = "r", **kwargs):
        return PathManager.open(self._get_local_path(path), mode, **kwargs)


def cache_path(path: str) -> Path:
    """The local file of `cascade://NAME`, existing or not."""
    if not path.startswith(CacheHandler.PREFIX):
        raise ValueError(f"{path} is not a {CacheHandler.PREFIX} path")
    return Path(get_cache_dir()) / "cascade" / path[len(CacheHandler.PREFIX) :]


PathManager.register_handler(CacheHandler())
