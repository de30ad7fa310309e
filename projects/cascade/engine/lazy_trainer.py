"""
`ReliableTrainer` for LazyConfigs (Python config files, as detectron2's ViTDet, MViTv2 and
new_baselines recipes are written), with every feature of the YAML path: exact resume,
safe checkpoints, COCO AP at strict IoUs, per-stage evaluation, expected results,
test-time augmentation and CPU processes.

The config has detectron2's LazyConfig layout (`model`, `dataloader.{train,test,evaluator}`,
`optimizer`, `lr_multiplier`, `train`, as in detectron2's configs/common) plus `test`
(see `run_settings.LAZY_TEST_DEFAULTS`). What this trainer changes in it:

* `dataloader.train` must call detectron2's `build_detection_train_loader` with its default
  sampler: the trainer builds the resumable stream from its dataset, mapper, batch size,
  aspect-ratio grouping and workers.
* detectron2's `DatasetMapper` becomes `CheckedDatasetMapper`, which names unreadable images.
* detectron2's `COCOEvaluator` becomes `COCOEvaluatorAtIoUs`, which adds AP60-AP90.
"""

import copy
import logging
from collections import OrderedDict

from detectron2.config import instantiate
from detectron2.data import DatasetMapper, build_detection_train_loader
from detectron2.engine import hooks
from detectron2.evaluation import COCOEvaluator, inference_on_dataset, print_csv_format
from detectron2.solver import LRMultiplier
from detectron2.utils import comm

from ..data.dataset_mapper import CheckedDatasetMapper
from ..errors import ConfigError
from ..evaluation import COCOEvaluatorAtIoUs
from ..run_settings import run_settings
from .trainer import ReliableTrainer, _WeightsInSync

__all__ = ["LazyConfigTrainer"]

logger = logging.getLogger(__name__)

# detectron2's classes that this trainer replaces by the project's subclasses.
_REPLACED = {DatasetMapper: CheckedDatasetMapper, COCOEvaluator: COCOEvaluatorAtIoUs}


def _instantiate(node, what):
    """`instantiate`, with the project's subclasses in place of detectron2's classes."""
    node = copy.deepcopy(node)
    if node.get("_target_") in _REPLACED:
        node._target_ = _REPLACED[node._target_]
    try:
        return instantiate(node)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"Building {what} from the LazyConfig failed: {e}") from e


class LazyConfigTrainer(ReliableTrainer):
    """`ReliableTrainer`, built from a LazyConfig (see the module docstring)."""

    @staticmethod
    def auto_scale_workers(cfg, num_workers):
        return cfg  # a LazyConfig states its batch size and schedule as they are

    @classmethod
    def build_model(cls, cfg):
        model = _instantiate(cfg.model, "model").to(cfg.train.device)
        logger.info(f"Model:\n{model}")
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        cfg.optimizer.params.model = model
        return instantiate(cfg.optimizer)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return LRMultiplier(optimizer, instantiate(cfg.lr_multiplier), cfg.train.max_iter)

    @classmethod
    def train_loader_arguments(cls, cfg):
        loader = cfg.dataloader.train
        if loader.get("_target_") is not build_detection_train_loader or loader.get("sampler"):
            raise ConfigError(
                "dataloader.train must call detectron2's build_detection_train_loader with its "
                "default sampler: the resumable training stream replaces that sampler."
            )
        return {
            "dataset": _instantiate(loader.dataset, "dataloader.train.dataset"),
            "mapper": _instantiate(loader.mapper, "dataloader.train.mapper"),
            "total_batch_size": loader.total_batch_size,
            "aspect_ratio_grouping": loader.get("aspect_ratio_grouping", True),
            "num_workers": loader.get("num_workers", 0),
        }

    @classmethod
    def ddp_arguments(cls, cfg):
        return dict(cfg.train.ddp)

    def build_hooks(self):
        train = self.cfg.train
        ret = [hooks.IterationTimer(), hooks.LRScheduler()]
        if comm.is_main_process():
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, **train.checkpointer))

        def test_and_save_results():
            self._last_eval_results = self.test(self.cfg, self.model)
            return self._last_eval_results

        ret.append(hooks.EvalHook(train.eval_period, test_and_save_results))
        ret += self.test_time_augmentation_hooks()
        if comm.is_main_process():
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=train.log_period))
        return ret + [_WeightsInSync(self.cfg.train.output_dir)]

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        model = cls.with_stage_outputs(cfg, model, evaluators)
        names = run_settings(cfg).test_datasets
        evaluators = evaluators or [cls.build_evaluator(cfg, name) for name in names]
        results = OrderedDict()
        for name, evaluator in zip(names, evaluators):
            results[name] = inference_on_dataset(model, cls.build_test_loader(cfg, name), evaluator)
            if comm.is_main_process():
                logger.info(f"Evaluation results for {name} in csv format:")
                print_csv_format(results[name])
        return results[names[0]] if len(names) == 1 else results

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        loader = copy.deepcopy(cfg.dataloader.test)
        loader.dataset.names = dataset_name
        loader.mapper = copy.deepcopy(loader.mapper)
        if loader.mapper.get("_target_") in _REPLACED:
            loader.mapper._target_ = _REPLACED[loader.mapper._target_]
        return _instantiate(loader, "dataloader.test")

    @classmethod
    def dataset_evaluator(cls, cfg, dataset_name, output_folder):
        evaluator = copy.deepcopy(cfg.dataloader.evaluator)
        evaluator.dataset_name = dataset_name
        evaluator.output_dir = output_folder
        return _instantiate(evaluator, "dataloader.evaluator")
