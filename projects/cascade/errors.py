"""
Errors that mean "the input is wrong", each with a message naming the file, key or
image at fault. ``train_net.py`` prints them without a stack trace: the fix lies in
the user's files, not in the code.
"""

__all__ = ["InputError", "ConfigError", "DatasetError", "CheckpointError"]


class InputError(ValueError):
    """A config, dataset or checkpoint that cannot be used as given."""


class ConfigError(InputError):
    """A config file, override or command-line flag that cannot be used."""


class DatasetError(InputError):
    """A dataset json, image folder or image that cannot be used."""


class CheckpointError(InputError):
    """A checkpoint file that is unreadable, truncated, or would run code when loaded."""
