"""Small helpers shared by the package, its scripts and its tools."""
from .file_io import atomic_write

__all__ = ["atomic_write"]
