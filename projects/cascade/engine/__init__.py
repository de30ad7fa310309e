"""Training: detectron2's DefaultTrainer made resumable and safe, and the launch checks."""
from .checkpoint import SafeCheckpointer
from .launch import check_launch, end_worker, load_config
from .trainer import ReliableTrainer

__all__ = ["SafeCheckpointer", "ReliableTrainer", "check_launch", "end_worker", "load_config"]
