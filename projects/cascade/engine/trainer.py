"""
detectron2's `DefaultTrainer`, made to run on CPU processes and to resume exactly, with
this project's evaluation.

Compared with `DefaultTrainer` it:

* wraps a CPU model in DistributedDataParallel without `device_ids` (detectron2's
  `create_ddp_model` passes the local rank, which DDP rejects for a CPU module), so
  `--num-gpus N MODEL.DEVICE cpu` trains N gloo processes;
* trains from a resumable data stream (:mod:`..data.resumable_loader`) and seeds every step from
  (seed, iteration, rank), so kill-and-resume ends with the weights of an
  uninterrupted run; the data seed is stored in the checkpoint;
* saves and loads through :class:`SafeCheckpointer`;
* reads images through :class:`CheckedDatasetMapper`;
* checks after training that every rank holds the same weights;
* evaluates with COCO AP at strict IoUs, optionally every cascade stage
  (TEST.CASCADE_STAGE_EVAL) and with test-time augmentation (TEST.AUG.ENABLED), and checks
  TEST.EXPECTED_RESULTS with a message naming each failed check.

Everything it reads from its config goes through `run_settings`, so that
`LazyConfigTrainer` only replaces what a LazyConfig builds differently.
"""

import hashlib
import logging
import os
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
from omegaconf import DictConfig
from torch import nn

from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    HookBase,
    SimpleTrainer,
    TrainerBase,
    hooks,
)
from detectron2.engine.defaults import create_ddp_model, default_writers
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from ..data.dataset_mapper import CheckedDatasetMapper
from ..data.resumable_loader import (
    build_resumable_train_loader,
    iteration_seed,
    resumable_loader_arguments,
)
from ..evaluation import CascadeStageEvaluator, COCOEvaluatorAtIoUs, check_expected_results
from ..modeling import CascadeStageOutputs
from ..modeling.test_time_augmentation import CascadeRCNNWithTTA
from ..run_settings import run_settings, setting_key
from ..utils import atomic_write_bytes
from .checkpoint import SafeCheckpointer

__all__ = [
    "ReliableTrainer",
    "FINGERPRINT_FILE",
    "read_weights_fingerprint",
    "weights_fingerprint",
]

logger = logging.getLogger(__name__)

# A YAML config, or a LazyConfig (omegaconf).
Config = Union[CfgNode, DictConfig]


# Written into the output folder, next to model_final.pth, after training: the fingerprint
# of the final weights (not the sha256 of the file, which also holds the optimizer's state).
FINGERPRINT_FILE = "final_weights.sha256"


def weights_fingerprint(state_dict: Dict[str, torch.Tensor]) -> str:
    """sha256 over the names and exact bytes of every tensor of a state dict."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        h.update(name.encode())
        tensor = state_dict[name].detach().cpu().contiguous().reshape(-1)
        h.update(tensor.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class _WeightsInSync(HookBase):
    """
    DistributedDataParallel keeps the ranks' weights equal only if every rank runs the
    same steps on the same parameters; a rank that skipped or repeated a step would
    go on silently with other weights. Each rank logs its fingerprint; a mismatch
    fails the run. The main process writes it to FINGERPRINT_FILE in `output_dir`.
    """

    def __init__(self, output_dir: str):
        self.output_dir = output_dir

    def after_train(self) -> None:
        if self.trainer.iter < self.trainer.max_iter:
            return  # training failed; its exception is what matters
        model = self.trainer.model
        model = getattr(model, "module", model)
        digest = weights_fingerprint(model.state_dict())
        logger.info(f"Weights of rank {comm.get_rank()} after training: sha256 {digest}")
        digests = comm.all_gather(digest)
        if len(set(digests)) > 1:
            raise RuntimeError(f"The ranks ended training with different weights: {digests}")
        if comm.is_main_process() and self.output_dir:
            path = os.path.join(self.output_dir, FINGERPRINT_FILE)
            atomic_write_bytes(path, f"{digest}\n".encode())


def read_weights_fingerprint(output_dir: str) -> str:
    """The fingerprint of the final weights that training wrote into `output_dir`."""
    return (Path(output_dir) / FINGERPRINT_FILE).read_text().strip()


class ReliableTrainer(DefaultTrainer):
    """`DefaultTrainer` with the changes listed in this module's docstring."""

    def __init__(self, cfg: Config):
        # DefaultTrainer.__init__, but with the data loader, DDP wrapping and
        # checkpointer described in the module docstring.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        settings = run_settings(cfg)

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        # A seed < 0 asks for a random seed: draw one shared by all ranks; the
        # checkpoint keeps it, so a resumed run continues the same stream.
        self.seed = settings.seed if settings.seed >= 0 else int(comm.shared_random_seed())
        data_loader, self.train_sampler = build_resumable_train_loader(
            **self.train_loader_arguments(cfg), seed=self.seed
        )
        ddp_kwargs = self.ddp_arguments(cfg)
        if next(model.parameters()).device.type == "cpu":
            ddp_kwargs["device_ids"] = None
        model = create_ddp_model(model, **ddp_kwargs)
        self._trainer = (AMPTrainer if settings.amp else SimpleTrainer)(
            model, data_loader, optimizer
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = SafeCheckpointer(
            model, settings.output_dir, trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self.max_iter = settings.max_iter
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def train_loader_arguments(cls, cfg: Config) -> Dict[str, Any]:
        """The arguments of `build_resumable_train_loader` but the seed."""
        return resumable_loader_arguments(cfg, CheckedDatasetMapper(cfg, True))

    @classmethod
    def ddp_arguments(cls, cfg: Config) -> Dict[str, Any]:
        return {"broadcast_buffers": False}

    def build_hooks(self) -> List[HookBase]:
        ret = super().build_hooks()
        # The writer comes last (on the main process), so that what runs after training
        # before it, such as the evaluation with test-time augmentation, is written too.
        writers = [i for i, h in enumerate(ret) if isinstance(h, hooks.PeriodicWriter)]
        at = writers[0] if writers else len(ret)
        return (
            ret[:at]
            + self.test_time_augmentation_hooks()
            + ret[at:]
            + [_WeightsInSync(run_settings(self.cfg).output_dir)]
        )

    def test_time_augmentation_hooks(self) -> List[HookBase]:
        """With test-time augmentation on, an evaluation with it after training (detectron2's)."""
        if not run_settings(self.cfg).test_time_augmentation:
            return []
        return [hooks.EvalHook(0, lambda: self.test_with_TTA(self.cfg, self.model))]

    def build_writers(self):
        return default_writers(run_settings(self.cfg).output_dir, self.max_iter)

    def resume_or_load(self, resume: bool = True) -> None:
        self.checkpointer.resume_or_load(run_settings(self.cfg).weights, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            # The checkpoint stores the iteration that just finished.
            self.start_iter = self.iter + 1
        # Continue the data stream after the last batch the checkpoint trained on.
        self.train_sampler.seed = self.seed
        self.train_sampler.start_batch = self.start_iter

    def train(self) -> Optional[Dict[str, Any]]:
        """Train; then check the last evaluation against the expected results, if any."""
        super(DefaultTrainer, self).train(self.start_iter, self.max_iter)  # TrainerBase.train
        expected = run_settings(self.cfg).expected_results
        if expected and comm.is_main_process():
            results = getattr(self, "_last_eval_results", None)
            if results is None:
                raise RuntimeError(
                    f"{setting_key(self.cfg, 'expected_results')} is set, but training ran no "
                    "evaluation to check it against."
                )
            check_expected_results(expected, results, setting_key(self.cfg, "expected_results"))
        return getattr(self, "_last_eval_results", None)

    def run_step(self) -> None:
        seed_all_rng(iteration_seed(self.seed, self.iter, comm.get_rank()))
        try:
            super().run_step()
        except FloatingPointError as e:
            # detectron2 names the iteration of a NaN loss, but not of the NaN boxes its
            # RPN may meet first; name it in every case.
            if f"iteration={self.iter}" in str(e):
                raise
            raise FloatingPointError(f"{e} (at iteration={self.iter})") from e

    def state_dict(self) -> Dict[str, Any]:
        ret = super().state_dict()
        ret["seed"] = self.seed
        return ret

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "seed" in state_dict:
            self.seed = state_dict["seed"]
        else:
            logger.warning(
                "The checkpoint does not record its data seed (it was not written by "
                f"ReliableTrainer); the data stream restarts with seed {self.seed}."
            )

    # ------------------------------------------------------------------ evaluation
    @classmethod
    def evaluate(cls, cfg: Config, model: nn.Module) -> Dict[str, Any]:
        """
        What `--eval-only` runs: the evaluation, with test-time augmentation if enabled,
        then the check of the expected results (on the main process).
        """
        results = cls.test(cfg, model)
        if run_settings(cfg).test_time_augmentation:
            results.update(cls.test_with_TTA(cfg, model))
        if comm.is_main_process():
            check_expected_results(
                run_settings(cfg).expected_results, results, setting_key(cfg, "expected_results")
            )
        return results

    @classmethod
    def test(cls, cfg: Config, model: nn.Module, evaluators=None) -> Dict[str, Any]:
        return super().test(cfg, cls.with_stage_outputs(cfg, model, evaluators), evaluators)

    @classmethod
    def with_stage_outputs(cls, cfg: Config, model: nn.Module, evaluators) -> nn.Module:
        """The model that the default evaluators evaluate."""
        if evaluators is None and run_settings(cfg).cascade_stage_eval:
            # One inference pass yields the detections of every stage and ensemble too.
            return CascadeStageOutputs(model)
        return model

    @classmethod
    def test_with_TTA(cls, cfg: Config, model: nn.Module) -> Dict[str, Any]:
        """Evaluate with test-time augmentation; the results' names end in "_TTA"."""
        logger.info("Running inference with test-time augmentation ...")
        folder = os.path.join(run_settings(cfg).output_dir, "inference_TTA")
        # Without the per-stage evaluation: the stages' own outputs are not augmented.
        evaluators = [
            cls.build_evaluator(cfg, name, os.path.join(folder, name), with_stages=False)
            for name in run_settings(cfg).test_datasets
        ]
        results = cls.test(cfg, cls.with_test_time_augmentation(cfg, model), evaluators)
        return OrderedDict((f"{k}_TTA", v) for k, v in results.items())

    @classmethod
    def with_test_time_augmentation(cls, cfg: Config, model: nn.Module) -> nn.Module:
        return CascadeRCNNWithTTA(model, **run_settings(cfg).augmentation)

    @classmethod
    def build_evaluator(
        cls,
        cfg: Config,
        dataset_name: str,
        output_folder: Optional[str] = None,
        with_stages: bool = True,
    ) -> DatasetEvaluator:
        """COCO evaluation with AP60-AP90, and of every cascade stage if TEST.CASCADE_STAGE_EVAL."""
        if output_folder is None:
            output_folder = os.path.join(run_settings(cfg).output_dir, "inference", dataset_name)
        evaluator = cls.dataset_evaluator(cfg, dataset_name, output_folder)
        if not (with_stages and run_settings(cfg).cascade_stage_eval):
            return evaluator
        return DatasetEvaluators([evaluator, CascadeStageEvaluator(dataset_name, output_folder)])

    @classmethod
    def dataset_evaluator(
        cls, cfg: Config, dataset_name: str, output_folder: str
    ) -> DatasetEvaluator:
        return COCOEvaluatorAtIoUs(dataset_name, output_dir=output_folder)

    @classmethod
    def build_test_loader(cls, cfg: Config, dataset_name: str):
        return build_detection_test_loader(
            cfg, dataset_name, mapper=CheckedDatasetMapper(cfg, False)
        )
