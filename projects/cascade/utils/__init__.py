"""Small helpers shared by the package, its scripts and its tools."""

from .file_io import CacheHandler, atomic_write, atomic_write_bytes, cache_path, sha256_of

__all__ = ["atomic_write", "atomic_write_bytes", "sha256_of", "CacheHandler", "cache_path"]
