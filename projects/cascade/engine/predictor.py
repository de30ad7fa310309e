"""Models with trained weights for the tools, benchmarks and experiments, loaded safely."""

from typing import Union

from omegaconf import DictConfig
from torch import nn

from detectron2.config import CfgNode
from detectron2.engine import DefaultPredictor

from ..run_settings import is_lazy, run_settings
from .checkpoint import SafeCheckpointer
from .lazy_trainer import LazyConfigTrainer
from .trainer import ReliableTrainer

__all__ = ["SafePredictor", "build_trained_model"]


def build_trained_model(cfg: Union[CfgNode, DictConfig]) -> nn.Module:
    """
    The model of `cfg` (YAML or LazyConfig) in inference mode, with the weights of its
    MODEL.WEIGHTS / train.init_checkpoint read through `SafeCheckpointer`.
    """
    trainer = LazyConfigTrainer if is_lazy(cfg) else ReliableTrainer
    model = trainer.build_model(cfg)
    SafeCheckpointer(model).load(run_settings(cfg).weights)
    return model.eval()


class SafePredictor(DefaultPredictor):
    """detectron2's `DefaultPredictor`, with its weights read through `SafeCheckpointer`."""

    def __init__(self, cfg: CfgNode):
        unloaded = cfg.clone()
        unloaded.defrost()
        unloaded.MODEL.WEIGHTS = ""  # DefaultPredictor builds the model and loads nothing
        super().__init__(unloaded)
        self.cfg = cfg.clone()
        SafeCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
