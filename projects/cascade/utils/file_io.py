"""Writing files so that a kill at any moment leaves the old file or the new one, never a part."""

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Union

__all__ = ["atomic_write"]


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
