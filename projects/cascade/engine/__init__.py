"""Training: detectron2's DefaultTrainer made resumable and safe, for YAML and LazyConfigs."""

from .checkpoint import SafeCheckpointer
from .launch import check_launch, end_worker
from .lazy_trainer import LazyConfigTrainer
from .trainer import ReliableTrainer

__all__ = ["SafeCheckpointer", "ReliableTrainer", "LazyConfigTrainer", "check_launch", "end_worker"]
